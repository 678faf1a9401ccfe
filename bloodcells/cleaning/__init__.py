"""Cleaning: perceptual hashes, the Hamming index, the duplicate/pollution/outlier pipeline,
contact sheets and the pollution planter that measures it. Imports only core."""
