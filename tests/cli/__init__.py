"""Tests of the commands as a user types them: oml compress/decompress/info/eval and careless use."""
