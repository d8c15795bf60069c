"""``python -m mulo.celo2.pretrained``: regenerate the shipped placeholder's files."""

from mulo.celo2.pretrained import write_placeholder

print(write_placeholder())
