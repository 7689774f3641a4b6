"""dicomd's benchmarks against DCMTK and pynetdicom: `bench/run [NAME [OPTIONS]]`."""
