"""`dna-vlm bench`: DnA vs stock attention and the video pipeline, measured side by side, with how it measures."""
