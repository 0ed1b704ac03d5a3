"""dicomnode: a DICOM AI node for lumbar-spine MR."""

__version__ = "0.1.0"
