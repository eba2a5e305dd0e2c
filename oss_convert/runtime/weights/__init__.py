"""The runtime's weights: objects that multiply themselves (matrices.py: a matrix as float32 values
or in its stored form; experts.py: a layer's expert stack, packed or left in its file), how a
stored form is multiplied on the CPU (products.py) or expanded (expand.py), and the one reader of
a checkpoint (source.py), which the model asks for its weights by name."""
