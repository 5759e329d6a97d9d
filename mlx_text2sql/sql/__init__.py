"""SQL text handling shared by every stage: the lexer (:mod:`.lexer`).

Pure Python: no MLX import.
"""

from .lexer import (KEYWORDS, LexError, Token, first_code_token, first_keyword, identifiers,
                    mask, pieces, scan, split_statements, strip_leading_comments, tokenize,
                    unterminated)

__all__ = ["KEYWORDS", "LexError", "Token", "first_code_token", "first_keyword", "identifiers",
           "mask", "pieces", "scan", "split_statements", "strip_leading_comments", "tokenize",
           "unterminated"]
