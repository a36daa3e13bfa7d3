"""RULER-style retrieval suite (after Hsieh et al. 2024): niah variants, vt, cwe, fwe, qa.

The task parameters and scoring rules follow the paper; prompts, word lists and
haystacks are written here. Every word a task can emit is declared in its
``vocabulary()``, so the reference word-level tokenizer covers it.
"""
