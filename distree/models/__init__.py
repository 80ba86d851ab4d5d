"""Networks: the pre-activation WideResNet, the teacher, the 7-exit student and the N-student model."""
