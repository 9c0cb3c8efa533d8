"""ShieldGemma 2's policy texts for ``kind: vlm_guard``, ``family: shieldgemma2``.

ShieldGemma 2 answers "Yes" (the image violates the policy) or "No" to one policy at a time;
its processor wraps each policy in the model's own instruction (the folder's chat template).
A policy is one line, ``No <harm>: The image shall not contain ...``. The three the model was
trained on (sexually explicit, dangerous, violence/gore) are Google's own wording, so the
categories they cover are judged as trained; the others are written in the same form.
"""

from __future__ import annotations

from safety_lora.taxonomy import Category

#: One policy per category, in ShieldGemma 2's form.
DEFAULT_TEXTS: dict[Category, str] = {
    Category.SEXUAL: (
        "No Sexually Explicit content: The image shall not contain content that depicts "
        "explicit or graphic sexual acts (e.g., pornography, erotic nudity, depictions of rape "
        "or sexual assault)."
    ),
    Category.VIOLENCE: (
        "No Violence/Gore content: The image shall not contain content that depicts shocking, "
        "sensational, or gratuitous violence (e.g., excessive blood and gore, gratuitous "
        "violence against animals, extreme injury or moment of death)."
    ),
    Category.SHOCKING: (
        "No Shocking content: The image shall not contain content that is gory, grotesque or "
        "disturbing (e.g., mutilated or decomposing bodies, open wounds, body horror, graphic "
        "medical imagery)."
    ),
    Category.HATE: (
        "No Hateful content: The image shall not contain content that expresses hatred or "
        "contempt for people based on protected characteristics (e.g., hate symbols, "
        "dehumanising caricatures, slurs, calls for discrimination or exclusion)."
    ),
    Category.HARASSMENT: (
        "No Harassment content: The image shall not contain content that bullies, humiliates "
        "or intimidates an identifiable person (e.g., degrading depictions of a real person, "
        "threats, mockery of a victim)."
    ),
    Category.SELF_HARM: (
        "No Self-Harm content: The image shall not contain content that depicts, encourages or "
        "glorifies self-harm or suicide (e.g., cutting, suicide methods, eating disorders shown "
        "as desirable)."
    ),
    Category.ILLEGAL_ACTIVITY: (
        "No Dangerous Content: The image shall not contain content that facilitates or "
        "encourages activities that could cause real-world harm (e.g., building firearms and "
        "explosive devices, promotion of terrorism, instructions for suicide)."
    ),
    Category.MINORS: (
        "No Minors: The image shall not contain a child or a person who appears to be under 18 "
        "years old."
    ),
}
