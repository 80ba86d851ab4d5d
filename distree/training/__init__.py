"""Training: the teacher, the partition step's inputs, the students; checkpoints and presets."""
