"""Mail knowledge without a database: parsing messages, addresses, company domains, robot
senders and vCards."""
