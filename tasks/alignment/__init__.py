"""Translation alignment: a synthetic language pair with gold word links, Pharaoh I/O."""
