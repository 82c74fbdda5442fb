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

# Feedback first and the text last: small models copy what they read last, and the text is what they
# should start from. Measured on SmolLM2-135M: with the text first, replies described the task instead.
OPTIMIZER_TEMPLATE = """Feedback on the {role}:
<FEEDBACK>
{feedback}
</FEEDBACK>
{constraints}
Text to rewrite ({role}):
<CURRENT>
{value}
</CURRENT>

{reply_format}"""

CONSTRAINTS_HEADER = "\nRules the rewritten text must follow:\n"

TEXT_LOSS_ROLE = "evaluation of the output"
