"""`bench/shards`: tinymix's shard build against img2dataset on the same URL list, side by side in one run."""
