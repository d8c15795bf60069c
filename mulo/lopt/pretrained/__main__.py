"""``python -m mulo.lopt.pretrained``: regenerate the hand-set placeholder's files (deterministic)."""

from mulo.lopt.pretrained import HERE, PLACEHOLDER, build_handset_adam

print(build_handset_adam().save_pretrained(HERE / PLACEHOLDER))
