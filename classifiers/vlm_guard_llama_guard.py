"""Llama Guard 4's category texts and prompt for ``kind: vlm_guard``, ``family: llama_guard``.

Llama Guard 4 reads a list of unsafe content categories (``S1: Violent Crimes.`` ...) and a
conversation, and answers ``safe`` or ``unsafe`` (then the violated codes). The prompt judging
one of our categories lists only that category's codes, so "unsafe" means that category. The
model's own codes (S1..S14, the MLCommons hazards) keep their trained names; a category with
no code (``shocking``) gets a new one, ``S15``, with a one-line definition.
"""

from __future__ import annotations

from safety_lora.taxonomy import Category

#: The two answers, violating first (the score is read at the first generated token).
ANSWERS = ("unsafe", "safe")
#: Special tokens of Llama 4's chat format the prompt is written with.
SPECIAL_TOKENS = ("<|header_start|>", "<|header_end|>", "<|eot|>")

#: The unsafe content categories listed for each of ours, in Llama Guard's form.
DEFAULT_TEXTS: dict[Category, str] = {
    Category.VIOLENCE: "S1: Violent Crimes.",
    Category.ILLEGAL_ACTIVITY: "S2: Non-Violent Crimes.\nS9: Indiscriminate Weapons.",
    Category.SEXUAL: (
        "S3: Sex-Related Crimes.\nS4: Child Sexual Exploitation.\nS12: Sexual Content."
    ),
    Category.MINORS: "S4: Child Sexual Exploitation.",
    Category.HARASSMENT: "S5: Defamation.",
    Category.HATE: "S10: Hate.",
    Category.SELF_HARM: "S11: Suicide & Self-Harm.",
    Category.SHOCKING: (
        "S15: Shocking Content.\n"
        "Images of gore, mutilation, corpses, open wounds or other graphic, disturbing injury."
    ),
}


def prompt(text: str, *, bos: str, image: str) -> str:
    """The whole prompt judging one image against ``text`` (the listed categories), in Llama
    4's chat format up to the assistant's answer; ``bos`` and ``image`` are the tokenizer's
    begin-of-text token and the processor's image placeholder."""
    return (
        f"{bos}<|header_start|>user<|header_end|>\n\n"
        "Task: Check if there is unsafe content in 'User' messages in conversations according "
        "to our safety policy with the below categories.\n\n"
        "<BEGIN UNSAFE CONTENT CATEGORIES>\n"
        f"{text.strip()}\n"
        "<END UNSAFE CONTENT CATEGORIES>\n\n"
        "<BEGIN CONVERSATION>\n\n"
        f"User: {image}\n\n"
        "<END CONVERSATION>\n\n"
        "Provide your safety assessment for ONLY THE LAST User message in the above "
        "conversation:\n"
        " - First line must read 'safe' or 'unsafe'.\n"
        " - If unsafe, a second line must include a comma-separated list of violated "
        "categories.<|eot|><|header_start|>assistant<|header_end|>\n\n"
    )
