"""Data: the dataset format and its validating reader, the synthetic video QA set, prompts and model inputs."""
