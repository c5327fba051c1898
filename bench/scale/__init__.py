"""`bench/scale`: plan a stage over a synthetic 10M / 100M-sample length index in bounded memory."""
