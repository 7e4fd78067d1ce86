"""Caption text: exact CLIP token counts (`tokens`), the face-attribute lexicon (`lexicon`), the cleaning
rules (`clean_rules`), caption prompt sets (`prompts`), the refiner's prompt and output parsing
(`refine_prompt`) and the guard that decides which refined captions survive (`judge`).

Plain Python on strings: no model, no ledger, so tests feed it scripted model outputs through the same
code the stages run.
"""
