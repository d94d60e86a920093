"""GR00T N1.5: config, checkpoint layout, model, pre/postprocessing, stage partition."""
