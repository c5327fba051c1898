"""Source readers, the image downloader, resizing and the shard writer: native dataset files → standard shards.

`shards` knows nothing of tokenizers or models; `mixer` builds on it.
"""
