"""The paper's analyses: computed as data (`compute`), drawn (`figures`), put on one
self-contained page (`page`), and run as one pipeline (`pipeline`) by ``modelsoup
analyze`` and the paper's experiment."""
