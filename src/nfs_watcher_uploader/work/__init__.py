"""Work: the queue of files, one file's transfer step by step, and files that do not go up."""
