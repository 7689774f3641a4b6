"""dicomd: a DICOM storage and query/retrieve server with its own network stack."""

__version__ = "0.1.0"

# Derived once with pydicom.uid.generate_uid(entropy_srcs=["dicomd implementation class"]): a UID
# under pydicom's root that no other implementation uses, stable across releases (PS3.7 D.3.3.2).
IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.8.498.76545713116216655370592048924003624229"
IMPLEMENTATION_VERSION_NAME = "DICOMD_" + __version__.replace(".", "")[:9]
