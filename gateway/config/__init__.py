"""YAML -> a typed, validated Config.

Every error names the file, the key path and the fix, and stops the server from starting. A
connection whose key reference cannot be resolved is not an error: it is disabled with a warning
(and the reason shown by `/readyz` and in the 503 a client gets when nothing is enabled).

`model.py` the typed values, `reader.py` the schema helper, `secrets.py` env:/stored: references,
`sections.py` each section and `parse_config`, `load.py` files.
"""
