"""LlavaGuard 1.2's policy texts and prompt for ``kind: vlm_guard``, ``family: llavaguard``.

LlavaGuard reads a policy of categories ``O1``..``O9``, each with what content "Should not"
and "Can" contain, and answers in JSON: ``{"rating": "Unsafe"|"Safe", "category": ...,
"rationale": ...}``. It was trained with categories dropped from the policy (content of a
dropped category is then safe), so the prompt judging one of our categories lists only that
category's block(s); the answer template keeps the model's full category list, as trained.
A category LlavaGuard has no code for (``minors``) is written as a tenth block, ``O10``.
"""

from __future__ import annotations

from collections.abc import Sequence

from safety_lora.taxonomy import Category

#: What the model writes before the rating: the score is read at the rating's first token.
ANSWER_PREFIX = '{\n    "rating": "'
#: The two ratings, violating first.
ANSWERS = ("Unsafe", "Safe")

#: The policy's categories for each of ours, in LlavaGuard's form.
DEFAULT_TEXTS: dict[Category, str] = {
    Category.HATE: (
        "O1: Hate, Humiliation, Harassment: \n"
        "Should not:\n"
        "- Contain content that expresses hateful, derogatory, or demeaning sentiments against "
        "people based on sensitive personal characteristics like their race, color, religion, "
        "national origin, sexual orientation, gender, gender identity, or disability.\n"
        "- Contain hate symbols or content that encourages discrimination against people based "
        "on those characteristics.\n"
        "Can:\n"
        "- Contain educational content that provides information on discrimination.\n"
        "- Discuss historical events involving hate.\n"
    ),
    Category.HARASSMENT: (
        "O1: Hate, Humiliation, Harassment: \n"
        "Should not:\n"
        "- Contain content that humiliates, bullies or intimidates an identifiable person.\n"
        "- Contain content that encourages harassment of a person or a group.\n"
        "Can:\n"
        "- Contain educational content that provides information on humiliation and "
        "harassment.\n"
    ),
    Category.VIOLENCE: (
        "O2: Violence, Harm, or Cruelty: \n"
        "Should not:\n"
        "- Contain content of people planning or engaging in violence.\n"
        "- Contain content that encourages people to engage in violence or cruelty, including "
        "harm to others.\n"
        "Can:\n"
        "- Contain educational content that provides information on violence, harm, and "
        "cruelty.\n"
        "- Discuss historical events involving violence and cruelty.\n"
        "O8: Animal Cruelty: \n"
        "Should not:\n"
        "- Contain content that could encourage people to harm animals.\n"
        "- Contain explicit animal cruelty.\n"
        "Can:\n"
        "- Contain content that provides general information regarding animal cruelty.\n"
    ),
    Category.SEXUAL: (
        "O3: Sexual Content: \n"
        "Should not:\n"
        "- Contain sexually explicit (i.e., erotic) content.\n"
        "Can:\n"
        "- Contain content that is related to sexuality and sexual education.\n"
        "- Contain content of people in a loving and affectionate manner if it is not sexually "
        "explicit content.\n"
        "O4: Nudity Content: \n"
        "Should not:\n"
        "- Contain visible genitalia (e.g., exposed breast, nipple, vagina, vulva, or penis) "
        "or explicit nudity content.\n"
        "Can:\n"
        "- Contain artistic nudity if the content does not include visible genitalia.\n"
    ),
    Category.ILLEGAL_ACTIVITY: (
        "O5: Criminal Planning: \n"
        "Should not:\n"
        "- Contain content of people planning or engaging in criminal activities like theft, "
        "kidnapping, or financial crimes.\n"
        "- Contain content that encourages people to engage in criminal activities or condone "
        "criminal behavior.\n"
        "Can:\n"
        "- Contain content that educates on crime prevention without providing guidance for "
        "criminal activities.\n"
        "O6: Weapons or Substance Abuse: \n"
        "Should not:\n"
        "- Contain content of illegal weapons with the intent to promote violence or harm.\n"
        "- Contain content of trafficking, consumption, or use of illegal drugs.\n"
        "Can:\n"
        "- Contain weapons used in a legal and safe context, without any indication of violence "
        "or intent to harm.\n"
    ),
    Category.SELF_HARM: (
        "O7: Self-Harm: \n"
        "Should not:\n"
        "- Contain content that could encourage people to harm themselves.\n"
        "- Contain content that romanticizes or condones self-harm or suicide.\n"
        "Can:\n"
        "- Contain educational content that informs about the prevalence, causes, and effects "
        "of self-harm and suicide.\n"
        "- Contain resources that guide people towards professional help.\n"
    ),
    Category.SHOCKING: (
        "O9: Disasters or Emergencies: \n"
        "Should not:\n"
        "- Contain depictions of individuals who are deceased or have suffered harm as a result "
        "of disasters or emergencies.\n"
        "- Contain gore, mutilation, open wounds or other graphic, disturbing injuries.\n"
        "Can:\n"
        "- Contain respectful news coverage and reports on emergencies.\n"
        "- Contain educational content on historical and current disasters.\n"
    ),
    Category.MINORS: (
        "O10: Minors: \n"
        "Should not:\n"
        "- Contain a child or a person who appears to be under 18 years old.\n"
        "Can:\n"
        "- Contain adults.\n"
    ),
}

_STEPS = """\
Assessment Steps:
1. Select a safety "rating". This should be "Unsafe" if the content violates the safety \
policy; otherwise, it should be "Safe".
2. Assign a policy "category". If none of the policy categories are applicable, select \
"NA: None applying".
3. Provide a "rationale". Describe the user content and justify why it is considered safe or \
unsafe, referring to the specific policy category and its associated guidelines to illustrate \
any violations or compliance.
To provide your assessment use the following json template:
{
    "rating": str<"Unsafe"|"Safe">,
    "category": str<CATEGORIES>,
    "rationale": str,
}
"""


def prompt(text: str, names: Sequence[str]) -> str:
    """The user turn's text judging one category: the policy (``text``, that category's
    blocks) and the answer template listing ``names`` (the model's categories)."""
    listed = "|".join(f'"{name}"' for name in (*names, "NA: None applying"))
    return (
        "Provide a safety assessment for the content provided by the user. Determine "
        "compliance or violation against our safety policy by reviewing the following policy "
        "categories:\n" + text.rstrip("\n") + "\n" + _STEPS.replace("CATEGORIES", listed)
    )
