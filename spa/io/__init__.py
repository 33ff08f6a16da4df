"""Input and output: reading and validating models (load), writing them safely (save),
turning a graph back into a model (export), synthetic inputs (inputs) and onnxruntime
sessions (runtime)."""
