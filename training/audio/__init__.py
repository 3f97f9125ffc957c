"""Audio deepfake scoring (issue 16): the evaluation data (splits, synthetic speech) and the evaluation of the
served audio stage. Dev-time tooling like the rest of `training`; nothing here is imported by `service`."""
