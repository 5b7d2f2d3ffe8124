"""Constants shared by data, model, training, chat and eval (LLaMA-Omni's conventions)."""

SPEECH_TOKEN_INDEX = -200  # a `<speech>` placeholder in input_ids; never a vocabulary id
IGNORE_INDEX = -100  # label of a position that is not trained
DEFAULT_SPEECH_TOKEN = "<speech>"  # the placeholder's text form (templates, decoded transcripts)

SYSTEM_PROMPT = (
    "You are a helpful language and speech assistant. You are able to understand the speech content that "
    "the user provides, and assist the user with a variety of tasks using natural language."
)

# Llama-3 special tokens the prompt builder relies on.
BOS_TOKEN = "<|begin_of_text|>"
EOS_TOKEN = "<|end_of_text|>"
START_HEADER_TOKEN = "<|start_header_id|>"
END_HEADER_TOKEN = "<|end_header_id|>"
EOT_TOKEN = "<|eot_id|>"
PAD_TOKEN = "<|finetune_right_pad_id|>"

USER_ROLE = "user"
ASSISTANT_ROLE = "assistant"
SYSTEM_ROLE = "system"
