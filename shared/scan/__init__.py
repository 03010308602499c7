"""Scanning a node's model folders: finding the files, reading their headers without loading tensors, hashing, classifying, reading sidecars and merging metadata into the scan's report."""
