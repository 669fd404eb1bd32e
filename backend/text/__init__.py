"""Text in and out: tokenizer, detokenizer, chat template, thinking and tool-call parsing, grammars."""
