"""The CRM: data model, storage layer and the capture rules that turn mail into CRM records."""
