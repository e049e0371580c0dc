"""What ``mailcrm capture`` needs of the CRM: the mail sources (files, Maildirs, mbox, stdin),
the capture path and a batch run over it with its summary (:mod:`crm.capture`)."""

from crm.capture.archive import Batch as Batch
from crm.capture.archive import capture_batch as capture_batch
from crm.capture.archive import summary as summary
from crm.capture.path import Capturer as Capturer
from crm.capture.path import CaptureResult as CaptureResult
from crm.capture.sources import read_sources as read_sources
