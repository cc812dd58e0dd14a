"""What t2i writes for other programs to read, and reads back: PNG settings (A1111 infotext), LoRA files, images."""
