"""Reading and writing checkpoints: the tensor `layout`, lazy `ingredients` (safetensors,
PyTorch files, Hugging Face folders, sharded or not), atomic writers (`save`) and what
``inspect`` reports (`summary`)."""
