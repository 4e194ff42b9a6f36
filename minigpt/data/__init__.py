"""Data: built-in corpora and readers (`sources`), cleaning (`clean`), the tokenizer, token files (`packing`),
pretraining windows (`datasets`) and chat examples (`chat_data`)."""
