"""SQL text handling shared by every stage: the lexer (:mod:`.lexer`) and CREATE TABLE names
(:mod:`.ddl`).

Pure Python: no MLX import.
"""

from .lexer import (KEYWORDS, LexError, Token, block_comments, first_code_token, first_keyword,
                    identifiers, mask, pieces, scan, split_statements, strip_leading_comments,
                    token_at, tokenize, unterminated)

__all__ = ["KEYWORDS", "LexError", "Token", "block_comments", "first_code_token", "first_keyword",
           "identifiers", "mask", "pieces", "scan", "split_statements", "strip_leading_comments",
           "token_at", "tokenize", "unterminated"]
