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
    "You edit a text that steers a language model, using feedback about how it performed. "
    "Your reply is the edited text and nothing else: no greeting, no heading, no comment on the changes."
)

OPTIMIZER_TEMPLATE = """Text to edit ({role}):
<CURRENT>
{value}
</CURRENT>

Feedback on it:
<FEEDBACK>
{feedback}
</FEEDBACK>
{constraints}
Write the whole text again with the changes the feedback asks for. {reply_format}"""

CONSTRAINTS_HEADER = "\nRules the edited text must follow:\n"

TEXT_LOSS_ROLE = "evaluation of the output"
