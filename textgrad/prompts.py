"""The instructions our engine sends to the evaluation model. Our own wording throughout."""

FEEDBACK_SYSTEM = (
    "You review the instructions given to a language model. You point out what in those instructions "
    "led to a weak or wrong output and what should change. You do not rewrite the instructions and "
    "you do not solve the task yourself."
)

FEEDBACK_TEMPLATE = """A language model worked with this {role}:
<VARIABLE>
{variable}
</VARIABLE>

It was given this input:
<INPUT>
{input}
</INPUT>

It answered:
<OUTPUT>
{output}
</OUTPUT>

How the answer was judged:
<JUDGEMENT>
{judgement}
</JUDGEMENT>

In at most five sentences, say how the {role} should change so that answers to inputs like this one get better. Be specific."""

OPTIMIZER_SYSTEM = (
    "You rewrite a text that steers a language model so that it follows the feedback it got. "
    "Your reply is the rewritten text and nothing else: no greeting, no heading, no comment on the changes."
)

# Feedback first, the text last, plain labels. Measured on SmolLM2-135M under a JSON schema: with the
# text first its replies described the task; with the text between <CURRENT> tags they copied it
# verbatim (3 of 3); as here they rewrote it with the feedback (4 of 4).
OPTIMIZER_TEMPLATE = """Feedback on the {role}:
{feedback}
{constraints}
Current {role}:
{value}

{reply_format}"""

CONSTRAINTS_HEADER = "\nRules the rewritten text must follow:\n"

TEXT_LOSS_ROLE = "evaluation of the output"

SUM_ROLE = "a combination of the following: {roles}"  # TextGrad's tests look for these words

AGGREGATE_SYSTEM = (
    "You combine several pieces of feedback on the same text into one. Keep every distinct request for a "
    "change, state a request that recurs once, and add nothing of your own."
)

AGGREGATE_TEMPLATE = """Feedback on the {role}, from {count} sources:
{feedback}

Write the combined feedback as one short paragraph."""

# TGD with momentum (textgrad.optimizer.momentum): the same request as TGD's with the variable's recent
# past in front, oldest first, and a sentence on what to make of it.
MOMENTUM_TEMPLATE = """Earlier versions of the {role}, oldest first, each with the feedback it got then:
{history}

Feedback that keeps coming back names what is still wrong; a point the later feedback no longer raises was fixed, so keep that fix.

""" + OPTIMIZER_TEMPLATE

MOMENTUM_STEP = """Version {number} ({age} before the current one):
{value}
Feedback on it:
{feedback}"""
