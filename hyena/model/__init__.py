"""The student model: the Hyena operator, the HF student (modeling) and building it from a teacher
(build), generation caches and generation for every model kind, model cards."""
