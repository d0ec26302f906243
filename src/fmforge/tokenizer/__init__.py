"""Train a byte-level BPE tokenizer and encode text shards into token shards."""
