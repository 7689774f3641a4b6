"""dicomd: a DICOM storage and query/retrieve server with its own network stack."""

__version__ = "0.1.0"
