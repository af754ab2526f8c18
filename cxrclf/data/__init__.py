"""Sources -> one manifest: readers, decoding, fusion, splits, audit and synthetic phantoms."""
