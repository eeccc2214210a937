"""Generator service: the streaming garment-swap student (engine in ``engine/``)."""
