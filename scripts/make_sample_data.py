"""Generate tunegate's shipped sample data: support tickets labelled as compact JSON.

Why this exists: the pipeline needs raw data that a 135M model visibly learns in a few
dozen CPU LoRA steps, that can be scored exactly, and that carries a known, small set of
real-looking defects so every curation stage has something to find. Writing it from a
seeded generator (stdlib only) makes the files reproducible, reviewable and free of any
third-party licence: the data is the project's own work, under the project's Apache-2.0.

Run from the repository root:

    python scripts/make_sample_data.py          # (re)write every file, print a summary
    python scripts/make_sample_data.py --check  # exit 1 if a file differs from what it writes

Every run rewrites the same bytes: a `random.Random` seeded from SEED per file, no clock,
no environment lookups, no iteration over unordered sets.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from random import Random

SEED = 1357
ROOT = Path(__file__).resolve().parent.parent
HUMAN_PATH = Path("datasets/raw/tickets_human.jsonl")
SYNTHETIC_PATH = Path("datasets/raw/tickets_synthetic.jsonl")
HELDOUT_PATH = Path("evals/data/heldout.jsonl")
RAW_README_PATH = Path("datasets/raw/README.md")
EVAL_README_PATH = Path("evals/data/README.md")
COMMAND = "python scripts/make_sample_data.py"

SYSTEM = "Classify the support ticket. Reply with JSON only, keys: intent, priority, order_id."

INTENTS = (
    "refund",
    "shipping_delay",
    "cancel_order",
    "account_access",
    "damaged_item",
    "billing_error",
    "product_question",
    "change_address",
)
PRIORITIES = ("high", "medium", "low")

N_HUMAN_CLEAN = 250
N_SYNTHETIC_CLEAN = 150
N_HELDOUT = 80
N_HELDOUT_SYNTHETIC_STYLE = 30

MIN_WORDS = 15
MAX_WORDS = 60
MAX_CHARS = 330  # keeps the whole chat (system + ticket + answer) under ~150 SmolLM2 tokens

# Clean rows must be this far apart (word-trigram Jaccard, order ids masked) so that a
# near-duplicate filter finds the planted near-duplicates and nothing else.
MAX_CLEAN_SIMILARITY = 0.5
HELDOUT_NGRAM = 8  # a held-out ticket may share no word 8-gram with any training row

# Share of tickets that carry an order id, by intent (overall about 70%).
ORDER_RATE = {
    "refund": 0.88,
    "shipping_delay": 0.88,
    "cancel_order": 0.88,
    "account_access": 0.15,
    "damaged_item": 0.88,
    "billing_error": 0.88,
    "product_question": 0.15,
    "change_address": 0.88,
}

# --------------------------------------------------------------------------- label rules
# The label rules are regexes over the ticket text, so the generator can prove every clean
# row is labelled by them and the README can state them exactly.

HIGH_CUES = (
    r"\burgent(?:ly)?\b|\basap\b|\bimmediate(?:ly)?\b|\bright now\b|\bthird time\b"
    r"|\bunacceptable\b|\bridiculous\b|\bfurious\b|\bfed up\b"
)
LOW_CUES = (
    r"\bno rush\b|\bno hurry\b|\bnot in a hurry\b|\b(?:when|whenever) you (?:get a chance"
    r"|have a moment)\b|\bat your convenience\b|\bjust curious\b"
)
ORDER_ID_RE = re.compile(r"\bA\d{5}\b")

# One family of cue words per intent. A clean ticket contains a cue of its own intent and
# no cue of any other intent, so the mapping is learnable and unambiguous.
INTENT_CUES = {
    "refund": r"\brefund|\bmoney back\b|\breimburs",
    "shipping_delay": (
        r"\btracking\b|\bdelayed\b|\bstill waiting\b|\b(?:hasn't|has not|never|not)(?: yet)?"
        r" arrived\b|\bstill not here\b|\bnot received\b"
    ),
    "cancel_order": r"\bcancel",
    "account_access": r"\blog ?in\b|\bpassword\b|\blocked out\b|\bsign in\b|\baccount\b",
    "damaged_item": (
        r"\bbroken\b|\bcracked\b|\bdamag|\bsmashed\b|\bshattered\b|\bdent(?:ed)?\b|\btorn\b"
        r"|\bscratch"
    ),
    "billing_error": r"\bcharge[ds]?\b|\binvoice\b|\bovercharged\b|\bbill(?:ed|ing)\b|\bpayment\b",
    "product_question": (
        r"\bcompatible\b|\bwaterproof\b|\bcomes? with\b|\bcomes? in\b|\bavailable in\b"
        r"|\bdifference between\b|\bwarranty\b|\bdishwasher safe\b|\bmachine washable\b"
        r"|\bwork with\b|\bin stock\b"
    ),
    "change_address": r"\ba?dd?ress\b",
}


def priority_of(text: str) -> str:
    """The priority rule: an urgency/anger cue wins, then a no-deadline cue, else medium."""
    if re.search(HIGH_CUES, text, re.IGNORECASE):
        return "high"
    if re.search(LOW_CUES, text, re.IGNORECASE):
        return "low"
    return "medium"


def order_id_of(text: str) -> str | None:
    """The order-id rule: the one `A` + 5 digits token in the ticket, or None."""
    found = ORDER_ID_RE.findall(text)
    return found[0] if found else None


def target_json(intent: str, priority: str, order_id: str | None) -> str:
    """The exact answer string: `json.dumps` of the three keys in a fixed order."""
    return json.dumps({"intent": intent, "priority": priority, "order_id": order_id})


# --------------------------------------------------------------------------- phrase banks
# Template syntax: `[a|b|]` picks one alternative (empty allowed); `<<with~without>>` is
# the part that mentions the order id in-line (`without` may be empty); `{product}`,
# `{product2}`, `{oref}` ("order #A12345"), `{oid}` ("A12345" / "#A12345"), `{street}`.

PRODUCTS = (
    "Nimbus Wireless Earbuds",
    "Aurora Desk Lamp",
    "Pico Smart Plug",
    "Ember Electric Kettle",
    "Lumen E-Reader",
    "Halcyon Coffee Grinder",
    "Orbit Phone Case",
    "Cascade Water Bottle",
    "Summit Hiking Backpack",
    "Vertex Running Shoes",
    "Tundra Winter Jacket",
    "Quill Fountain Pen",
)
STREETS = ("12 Elm Street", "48 Harbour Road", "7 Mill Lane", "221 River Street", "9 Station Road")
FIRST_NAMES = (
    "Maria", "Tom", "Priya", "Kenji", "Olga", "Sam", "Fatima", "Luis", "Grace", "Ahmed",
    "Chloe", "Dmitri", "Aisha", "Ben", "Elena", "Noah", "Mei", "Jonas", "Ruth", "Tariq",
)  # fmt: skip
LAST_NAMES = (
    "Garcia", "Okafor", "Lindqvist", "Patel", "Moreau", "Novak", "Tanaka", "Reyes",
    "Fischer", "Haddad", "Kowalski", "Brennan",
)  # fmt: skip

HUMAN_TEMPLATES: dict[str, tuple[str, ...]] = {
    "refund": (
        "[I want|I'd like|can I get] a refund for the {product}<< from {oref}>>, [it's not what"
        " I expected|it's just not for me|I really don't like it].",
        "sent the {product} back [last week|ten days ago|two weeks ago]<< ({oref})>> and [still"
        " no refund|I haven't seen my refund yet].",
        "[how do I|how can I|can I still] get my money back [for|on] the {product}<< [on|from]"
        " {oref}>>? [it's unused|never even opened it|kept the receipt].",
        "please refund <<{oref}~my {product} order>>, [it doesn't fit|wrong size|it looks nothing"
        " like the photos].",
        "the {product} [doesn't fit|is the wrong size|isn't what I wanted], [I'd like|I want|can"
        " I have] my money back<< for {oref}>>.",
        "returned the {product}<< from {oref}>> [a while ago|on monday|last month], when will the"
        " refund [show up|hit my card|go through]?",
        "[changed my mind about|decided against|not keeping] the {product}<< ({oref})>>, [I"
        " want|I need|requesting] a refund[ please| if possible|].",
        "[can I be|how do I get|could I be] reimbursed for the {product}<< on {oref}>>? it"
        " [wasn't as described|looks cheap|is nothing like the listing].",
    ),
    "shipping_delay": (
        "my {product} [still hasn't arrived|has not arrived]<<, {oref}>>. it's been [two"
        " weeks|ten days|over a week].",
        "where is my [package|parcel|stuff]<< for {oref}>>? tracking hasn't [updated|moved] in"
        " [days|five days|a week].",
        "ordered the {product} [on the 3rd|last month|three weeks ago]<< ({oref})>> [and|but]"
        " it's still not here[ yet|].",
        "the [delivery|estimated] date for [the|my] {product}<< on {oref}>> [came and"
        " went|passed last friday] and it has not arrived [yet|at all].",
        "[what's going on|what's up|any news] with my [shipment|delivery]<< {oid}>>? [it"
        " says|tracking says|the site says] delayed [since monday|for a week now|with no new"
        " date].",
        "still waiting on the {product}<< from {oref}>>, it was [supposed to be here|due] [last"
        " week|on tuesday].",
        "[my|the] {product}<< on {oref}>> [never arrived|has not arrived], the tracking [just"
        " says|still says|only shows] [in transit|label created].",
        "the tracking for <<{oref}~my order>> hasn't changed since [the 12th|last weekend|it"
        " shipped]. is it lost?",
    ),
    "cancel_order": (
        "please cancel <<{oref}~my order for the {product}>>, I [ordered it by mistake|found it"
        " cheaper elsewhere|don't need it anymore].",
        "can you cancel the {product} I just ordered<< ({oref})>>? [wrong one|I clicked buy by"
        " accident|my partner already got one].",
        "[I want to|need to|I'd like to] cancel my order<< {oid}>> before it ships, [the {product}"
        " was a gift idea that fell through|I found a better deal].",
        "accidentally ordered two of the {product}<< on {oref}>>, [please cancel one|can you"
        " cancel one of them].",
        "how do I cancel <<{oref}~an order>>? there's no cancel button [on the site|in the app].",
        "changed my mind on the {product}, please cancel<< {oref}~ it>> if it hasn't shipped yet.",
        "[cancel|please cancel] the {product}<< ({oref})>>, [my sister already bought me one|I"
        " picked the wrong colour].",
    ),
    "account_access": (
        "I can't [log in to|get into] my account, [it says|it keeps saying|I get] wrong password"
        " [even after resetting it|but I know it's right|every single time].",
        "[I'm|I am|got] locked out of my account [after too many|after a few|because of too"
        " many] [attempts|tries|wrong guesses][, please help|]. [I use it every day|it just"
        " happened this morning|no idea why].",
        "the password reset [email|link] isn't [coming through|arriving|showing up], [checked"
        " spam too|been trying all morning|tried three times].",
        "I can't sign in[ on my phone| on the app|], the verification code [isn't being"
        " sent|never gets to my phone|never comes through].",
        "my account got [locked|frozen|blocked] while I was checking <<{oref}~an order>>, [how do"
        " I get back in|what do I do now|can you unlock it]?",
        "[forgot|lost] my password and the reset [link|email] [says it expired|doesn't"
        " work|gives an error]. [tried twice|same thing on my phone|cleared cookies too].",
        "someone [changed|reset] my account password[ last night| yesterday|] and I can't get"
        " in [anymore|at all].",
        "the login page just [keeps reloading|shows an error|spins forever] when I [enter|type]"
        " my password[ on chrome| on my laptop|].",
    ),
    "damaged_item": (
        "the {product} arrived [broken|cracked|smashed]<< ({oref})>>[, the box was"
        " crushed|, packaging was soaked|].",
        "got my {product}<< from {oref}>> today and [it's cracked|one part is broken|there's a"
        " big dent in it].",
        "the {product} came damaged<<, order {oid}>>. [what do I do|can you send a replacement]?",
        "opened the box and the {product}<< ({oref})>> is [scratched all over|cracked down the"
        " side|badly dented].",
        "[received|got] a damaged {product}<< on {oref}>>, [I have photos|can send"
        " photos|pictures attached][ if you need them|].",
        "the {product} I got<< with {oref}>> has a torn [seam|strap] and [a broken clasp|scuff"
        " marks].",
        "my {product}<< ({oref})>> showed up [smashed|with a shattered part], looks like it was"
        " dropped.",
    ),
    "billing_error": (
        "I was [charged twice|double charged|charged two times] for the {product}<< ({oref})>>,"
        " [can you sort this out|what happened|please fix it]?",
        "my [card|bank statement] shows [two charges|a double charge] for <<{oref}~one order>>.",
        "the invoice for <<{oref}~my last order>> says [$89|$120|$64] but the {product} was"
        " listed at [$59|$45|$39].",
        "why was I billed [again|a second time] for the {product}<< on {oref}>>?",
        "got overcharged<< on {oref}>>, the [discount|promo|coupon] code [wasn't applied|didn't"
        " work] [on|for] the {product}.",
        "there's a charge on my [card|statement] [I don't recognise|I never made|that isn't"
        " mine]<<, maybe from {oref}>>. [I only bought the {product}|never ordered twice].",
        "paid for [express|next-day] shipping on the {product}<< ({oref})>> but was charged [for"
        " it twice|the wrong amount].",
        "the payment for <<{oref}~my order>> went through twice, [please sort it out|can you"
        " reverse one]?",
    ),
    "product_question": (
        "is the {product} compatible with [iPhone 15|Android phones|older laptops]?",
        "does the {product} come with a [warranty|carrying case|spare parts kit]? [thinking of"
        " getting one|want to buy it as a gift].",
        "is the {product} waterproof? [planning to take it hiking|want to use it outdoors].",
        "what's the difference between the {product} and the {product2}? [which one would you"
        " recommend|they look the same to me]",
        "does the {product} come in [other colours|black|a bigger size]? [I only see one on the"
        " site|can't find it on the site].",
        "[how long is|what is|what's] the warranty [on|for] the {product}? [my last one lasted a"
        " year|want to know before I buy].",
        "thinking of buying the {product}, is it [dishwasher safe|machine washable]?",
        "I ordered the {product}<< ({oref})>>, will it work with [a 220V outlet|my old one|a"
        " standard wall socket]?",
        "is the {product} in stock in [navy|white|a larger size]? [the page says limited|can't"
        " tell from the site].",
    ),
    "change_address": (
        "[I need to|can you|please] change the [shipping|delivery] address on <<{oref}~my"
        " order>>, I [just moved|moved last week].",
        "can you [send|ship] the {product} to a different address?<< it's {oref}.>>",
        "wrong address on my order<< {oid}>>, it should be {street}.",
        "please update the [delivery|shipping] address for the {product}<< ({oref})>> to my"
        " [work|office|parents'] address.",
        "I typed the wrong [apartment number|zip code] in my address<< for {oref}>>, [can you fix"
        " it|please correct it|can that be fixed] before it ships?",
        "moving [next week|on friday], can the {product}<< from {oref}>> [go to|be sent to] my"
        " new address[ instead|]?",
        "the address on <<{oref}~my order>> is [my old one|out of date|wrong], please"
        " [change|update] it to {street}.",
    ),
}

SYNTHETIC_TEMPLATES: dict[str, tuple[str, ...]] = {
    "refund": (
        "[I am writing|I'm reaching out|I am contacting you] to [request|ask for] a refund for the"
        " {product}<< [associated with|from|on] {oref}>>, as it [did not meet|fell short of] my"
        " [expectations|needs].",
        "I [recently|just|finally] returned the {product}<< [from|for] {oref}>> and would like to"
        " [know|confirm|check on] the [status|progress] of my refund.",
        "I would like to [request|receive] a [full|complete] refund for the {product}<<"
        " ({oref})>>, as the [item|product] [was not as described|differs from the listing|is"
        " not what I ordered].",
        "Could you [please|kindly] [process|issue|arrange] a refund for the {product}<< [on|for]"
        " {oref}>>? I [no longer require|have no further use for|decided not to keep] the"
        " [item|product].",
        "I am [seeking|requesting] reimbursement for the {product}<< ({oref})>>, which I [sent"
        " back|returned|shipped back] [last week|earlier this month|on the 2nd].",
        "I returned the {product} [over two weeks ago|some time ago|nearly a month ago]<<"
        " [under|for] {oref}>>, [but|yet|however] my refund [has not been issued|is still"
        " pending|has not appeared].",
    ),
    "shipping_delay": (
        "I [placed|submitted] an order for the {product}<< ({oref})>> [two weeks ago|on the 5th"
        " of this month|some time ago], and it has not arrived [yet|so far].",
        "[I am writing|I'm reaching out] to [inquire|ask] about my [shipment|delivery|parcel]<<"
        " for {oref}>>, as the tracking [information|status|page] has not been"
        " [updated|refreshed] [for several days|since last week|in days].",
        "My order<< {oid}>> was [expected|due|supposed to arrive] [last week|five days ago|by"
        " Friday], but I have [not received it|not received anything|still not received it]."
        " [Could|Can|Would] you [please|kindly] [provide an update|check on it]?",
        "It [appears|seems] that the [delivery|shipment] of my {product}<< ({oref})>> has been"
        " delayed. Could you [let me know|tell me|advise] when I [can|should] expect it?",
        "I have been [waiting|waiting patiently] for the {product} for [over a week|nearly three"
        " weeks|ten days]<<, order number {oid}>>, and the tracking [shows no progress|has not"
        " changed|still says processing].",
        "I am still waiting for [my|the] {product}<< ({oref})>>, which was [due|scheduled|meant]"
        " to be delivered [on Monday|several days ago|last Thursday].",
    ),
    "cancel_order": (
        "I [would like|wish|need] to cancel my order<< {oid}>> for the {product}, as I no longer"
        " [need|require|want] it.",
        "Could you [please|kindly] cancel <<{oref}~my recent order of the {product}>>? I [placed"
        " it by mistake|ordered the wrong model|selected the wrong size].",
        "[I am writing|I would like] to [request|ask for] the cancellation of my"
        " [order|purchase]<< {oid}>>, as I have [found|chosen|decided on] a [more"
        " suitable|better|cheaper] alternative.",
        "Please cancel my [purchase|order] of the {product}<< ({oref})>> before it is"
        " [dispatched|sent out|shipped].",
        "[Due to|Because of|Following] a change in my [plans|circumstances], I [need|would"
        " like|have] to cancel the {product} I [ordered|purchased]<<, order number {oid}>>.",
        "I [kindly|respectfully] request that you cancel <<{oref}~my order for the {product}>>,"
        " which I placed [yesterday|earlier today|this morning].",
    ),
    "account_access": (
        "I am [unable|not able] to [log in to|access] my account[, even though| although] I [am"
        " entering|have entered|typed] the [correct|right] password.",
        "I [have been|was|appear to have been] locked out of my account [after several|following"
        " multiple|after a few] failed login attempts[ this morning| yesterday|]. Could you"
        " [please|kindly] help me [regain access|get back in]?",
        "The password reset link [I received|that was emailed to me|you sent me] [appears to be"
        " invalid|has expired|does not work]. I would [appreciate|be grateful for]"
        " [assistance|help] [accessing|getting into] my account.",
        "I am not receiving the [verification|security|login] code, so I [cannot|am unable to]"
        " sign in to my account [on my phone|on my laptop|at all].",
        "I am having [trouble|difficulty|issues] accessing my account<< and need to review"
        " {oref}>>. The [page|website|app] shows an error [after|whenever|as soon as] I enter my"
        " password.",
        "It [seems|appears] my account has been [deactivated|locked|suspended] without"
        " [notice|warning|explanation], and I [can no longer|am unable to|cannot] log in[ at"
        " all|].",
    ),
    "damaged_item": (
        "Unfortunately, the {product} I received<< ({oref})>> arrived damaged, and the"
        " [packaging|box|parcel] [appeared to be|was visibly|looked] crushed.",
        "[I am writing|I would like] to report that my {product}<< from {oref}>> was delivered"
        " with a cracked [casing|surface|panel|base].",
        "Upon opening the [package|parcel|box], I [discovered|found|noticed] that the {product}<<"
        " ({oref})>> was broken. I would like [to request|to receive|] a [replacement|new unit].",
        "The {product} from my [recent|latest] order<< {oid}>> has [visible|noticeable"
        "|significant] damage, including [deep scratches|a dented corner|a bent handle].",
        "I [regret to inform you|am sorry to report|must let you know] that the {product} arrived"
        " with a shattered [part|component|panel]<<, order number {oid}>>[, making it unusable|].",
        "The {product}<< ({oref})>> reached me in [poor|bad|terrible] condition, with a torn"
        " [strap|seam|cover] and [several|a few|multiple] scratches.",
    ),
    "billing_error": (
        "I [noticed|have noticed|can see] that I was [charged twice|charged two times|double"
        " charged] for the {product}<< ({oref})>>. Could you [please|kindly]"
        " [correct|rectify|resolve] this?",
        "The amount on my invoice<< for {oref}>> does not match the price"
        " [displayed|shown|advertised] [at checkout|on your website|on the product page].",
        "I believe there [is|has been] a billing error on my [recent|latest] order<< {oid}>>, as"
        " I was billed for [two units|an extra item|three units] instead of one.",
        "My payment for the {product} [appears|seems] to have been [processed|taken] twice<<,"
        " order number {oid}>>[, according to my bank|].",
        "I was overcharged for the {product}<< in {oref}>>, as the"
        " [promotional|advertised|loyalty] discount was not applied[ at checkout|].",
        "I have [found|noticed|spotted] an [unexpected|unfamiliar] charge on my [card|bank"
        " statement]<< related to {oref}>> that I did not [authorise|recognise|expect].",
    ),
    "product_question": (
        "Could you [please|kindly] [tell me|confirm|let me know] whether the {product} is"
        " compatible with [Android devices|older models|international outlets|European"
        " sockets]?",
        "I am [interested in|considering] [purchasing|buying] the {product}. [Does it come"
        " with|Is it sold with|Do you offer] a warranty, and if so, [for how long|what does it"
        " cover]?",
        "I would like to [know|find out|ask] if the {product} is available in [other colours|a"
        " larger size|a travel version|a smaller size].",
        "Could you [clarify|explain|describe] the [main|key|] difference between the {product}"
        " and the {product2}?",
        "Before placing an order, I [wanted|would like] to ask whether the {product} is"
        " [waterproof|machine washable|dishwasher safe].",
        "Regarding my [order|purchase]<< {oid}>>, could you [confirm|tell me] whether the"
        " {product} comes with [a manual|spare parts|a carrying pouch|a storage bag]?",
    ),
    "change_address": (
        "I [would like|need|wish] to update the [shipping|delivery] address for my order<<"
        " {oid}>>, as I have [recently relocated|just moved|moved house].",
        "Could you [please|kindly] change the [delivery|shipping] address for the {product}<<"
        " ({oref})>> to {street}?",
        "I made [an error|a mistake] when [entering|typing] my address for the {product}<<,"
        " order number {oid}>>. Is it still possible to [correct|amend|update] it?",
        "Please [redirect|send] my order<< {oid}>> to a new address, as I [will no longer be|am"
        " no longer|will not be] [at|living at] the [original|old|previous] [location|flat].",
        "[I am writing|I would like] to [request|ask for] an address change for my"
        " [recent|latest] purchase<< ({oref})>> before it is [shipped|dispatched].",
        "I have [moved|relocated] to {street} and would like the {product}<< from {oref}>> to be"
        " [delivered|sent] to my new address.",
    ),
}


@dataclass(frozen=True)
class Style:
    """How one kind of author writes: the frame around the intent sentence.

    Frame strings use the template syntax too, with `{name}` and `{id}` slots.
    """

    name: str
    templates: dict[str, tuple[str, ...]]
    greetings: tuple[str, ...]
    greeting_rate: float
    openers: tuple[str, ...]
    opener_rate: float
    signoffs: tuple[str, ...]
    signoff_rate: float
    high: tuple[str, ...]
    high_prefixes: tuple[str, ...]
    low: tuple[str, ...]
    fillers: tuple[str, ...]
    filler_rate: float
    no_order_notes: tuple[str, ...]
    oref_forms: tuple[str, ...]
    oid_forms: tuple[str, ...]
    prefix_forms: tuple[str, ...]
    suffix_forms: tuple[str, ...]
    casual_rate: float
    typo_rate: float
    full_names: bool


HUMAN = Style(
    name="human",
    templates=HUMAN_TEMPLATES,
    greetings=("Hi,", "Hello,", "Hey,", "Hi there,", "Hello team,", "Good morning,",
               "Hi support,", "Dear Sir or Madam,", "Hey team,", "Good afternoon,"),
    greeting_rate=0.55,
    openers=(),
    opener_rate=0.0,
    signoffs=("Thanks, {name}", "Thanks!", "thx", "Cheers, {name}", "- {name}",
              "Regards, {name}", "Thank you. {name}", "{name}", "Thanks in advance."),
    signoff_rate=0.5,
    high=("This is urgent.", "pls sort this asap.", "I need [this sorted|an answer] ASAP!",
          "Please deal with this immediately.",
          "This is the third time I'm [contacting you|writing|asking]!",
          "third time asking now.", "Honestly this is unacceptable.", "I'm furious.",
          "Seriously, this is ridiculous.", "I'm fed up with this.",
          "[I need|I want] an answer right now.", "Need help urgently!"),
    high_prefixes=("URGENT:", "Urgent -", "ASAP:", "URGENT!!"),
    low=("No rush.", "no rush at all, thanks.", "[No hurry|No stress], whenever you get a chance.",
         "Just curious.", "Whenever you get a chance, [thanks|cheers]!",
         "Not in a hurry, [just let me know|reply when you can|thanks].",
         "When you have a moment, thanks."),
    fillers=("Thanks.", "Let me know.", "Any help appreciated.", "Can someone look into this?",
             "What are my options?", "Please help."),
    filler_rate=0.5,
    no_order_notes=("I don't have the order number [handy|on me|with me].",
                    "can't find my order number, sorry.",
                    "[not sure|no idea] what the order number was."),
    oref_forms=("order {id}", "order #{id}", "order number {id}", "#{id}", "order no. {id}"),
    oid_forms=("{id}", "#{id}"),
    prefix_forms=("Re: order {id}.", "Order #{id}:", "order {id} -", "#{id}:"),
    suffix_forms=("Order # is {id}.", "order number {id}", "(order {id})", "It's order {id}.",
                  "ref #{id}"),
    casual_rate=0.2,
    typo_rate=0.15,
    full_names=False,
)  # fmt: skip

SYNTHETIC = Style(
    name="synthetic",
    templates=SYNTHETIC_TEMPLATES,
    greetings=("Dear Customer Support Team,", "Hello Support Team,", "Dear Support,", "Hello,",
               "Greetings,", "Dear Customer Service,", "Hi Support Team,", "Dear Sir or Madam,"),
    greeting_rate=0.8,
    openers=("I hope [this message finds you|you are|all is] well.",
             "I trust [you are|this finds you] well.",
             "I hope [your week|your day] is going well."),
    opener_rate=0.3,
    signoffs=("Best regards, {name}", "Kind regards, {name}", "Sincerely, {name}",
              "Thank you for your [assistance|help|time].",
              "Thank you [in advance|kindly|so much] for your [help|support|understanding].",
              "Many thanks, {name}", "Warm regards, {name}"),
    signoff_rate=0.7,
    high=("This matter is [urgent|extremely urgent].",
          "I need this [resolved|fixed|sorted out] immediately.",
          "[This is|It is now] the third time I [have raised|am raising|have reported] this"
          " [issue|problem].",
          "I would [appreciate|expect] an immediate [response|reply].",
          "Frankly, this is unacceptable.",
          "Please treat this as urgent[, as I rely on it daily|]."),
    high_prefixes=("URGENT:",),
    low=("There is no rush on this [matter|request].",
         "Please [respond|reply] at your convenience.",
         "[I am|I'm] not in a hurry, so [please reply|feel free to respond|any reply is fine]"
         " [whenever you can|later this week].",
         "Whenever you have a moment, [I would appreciate a reply|a reply would be"
         " appreciated|please let me know]."),
    fillers=("Could you please look into this?", "I look forward to your [response|reply].",
             "Please let me know [the next steps|what happens next|how to proceed].",
             "Thank you for your help.", "Please advise.", "I would appreciate your assistance."),
    filler_rate=0.6,
    no_order_notes=("Unfortunately, I [do not have|cannot find|no longer have] my order number"
                    " [at hand|available|with me].",
                    "I [cannot locate|am unable to find] my order number [at the moment|just"
                    " now]."),
    oref_forms=("order {id}", "order number {id}", "order #{id}"),
    oid_forms=("{id}", "#{id}"),
    prefix_forms=("Subject: Order {id}.", "Reference: order number {id}."),
    suffix_forms=("[For reference|For your reference], my order number is {id}.",
                  "The order number is {id}.", "Order reference: {id}."),
    casual_rate=0.0,
    typo_rate=0.0,
    full_names=True,
)  # fmt: skip

# Misspellings a hurried human makes; never applied to a cue word except "address".
TYPOS = (
    ("received", "recieved"),
    ("please", "plz"),
    ("because", "becuase"),
    ("really", "realy"),
    ("thanks", "thx"),
    ("address", "adress"),
    ("the", "teh"),
    ("order", "oder"),
    ("you", "u"),
    ("don't", "dont"),
    ("it's", "its"),
)

# Word swaps for the planted near-duplicates (one word changed, meaning kept).
NEAR_DUP_SWAPS = {
    "Dear": "Hello",
    "Hello": "Hi",
    "Best": "Kind",
    "Kind": "Warm",
    "Warm": "Best",
    "Sincerely,": "Regards,",
    "Many": "Warmest",
    "Greetings,": "Hello,",
}


# --------------------------------------------------------------------------- generation


@dataclass(frozen=True)
class Ticket:
    """One labelled ticket; `style` says which author voice wrote it."""

    text: str
    intent: str
    priority: str
    order_id: str | None
    style: str

    @property
    def target(self) -> str:
        """The exact JSON answer for this ticket."""
        return target_json(self.intent, self.priority, self.order_id)


@dataclass
class OrderIds:
    """Hands out unique order ids so no two tickets ever share one by accident."""

    rng: Random
    used: set[str] = field(default_factory=set)

    def new(self) -> str:
        """A fresh `A` + 5 digits id."""
        while True:
            oid = f"A{self.rng.randint(10000, 99999)}"
            if oid not in self.used:
                self.used.add(oid)
                return oid


def _pick(rng: Random, options: Sequence[str]) -> str:
    """One option; kept as a function so every random draw is visible in one place."""
    return options[rng.randrange(len(options))]


def _expand(template: str, rng: Random, inline_order: bool, slots: dict[str, str]) -> str:
    """Fill one template: order segment, then alternatives, then named slots."""

    def segment(m: re.Match[str]) -> str:
        with_order, _, without = m.group(1).partition("~")
        return with_order if inline_order else without

    text = re.sub(r"<<(.*?)>>", segment, template)
    text = re.sub(r"\[([^\[\]]*)\]", lambda m: _pick(rng, m.group(1).split("|")), text)
    for name, value in slots.items():
        text = text.replace("{" + name + "}", value)
    return text


def _sentence_case(text: str) -> str:
    """Capitalise the first letter of the text and of every sentence."""
    text = text[:1].upper() + text[1:]
    return re.sub(r"([.!?]\s+)([a-z])", lambda m: m.group(1) + m.group(2).upper(), text)


def _restore_ids(text: str) -> str:
    """Lower-casing a whole ticket must not change the order id it carries."""
    return re.sub(r"\ba(\d{5})\b", r"A\1", text)


def _name(rng: Random, style: Style) -> str:
    """A customer name for a sign-off."""
    first = _pick(rng, FIRST_NAMES)
    return f"{first} {_pick(rng, LAST_NAMES)}" if style.full_names else first


def compose(rng: Random, style: Style, intent: str, priority: str, order_id: str | None) -> Ticket:
    """Write one ticket for the given labels in the given voice.

    The frame (greeting, order reference, priority cue, sign-off) is drawn independently
    of the intent sentence so that no label is predictable from the frame alone.
    """
    template = _pick(rng, style.templates[intent])
    has_segment = "<<" in template and ("{oref}" in template or "{oid}" in template)
    placement = "none"
    if order_id is not None:
        if has_segment and rng.random() < 0.6:
            placement = "inline"
        else:
            placement = "prefix" if rng.random() < 0.3 else "suffix"
    product = _pick(rng, PRODUCTS)
    product2 = _pick(rng, [p for p in PRODUCTS if p != product])
    oid_text = order_id or ""
    slots = {
        "product": product,
        "product2": product2,
        "oref": _pick(rng, style.oref_forms).format(id=oid_text),
        "oid": _pick(rng, style.oid_forms).format(id=oid_text),
        "street": _pick(rng, STREETS),
    }
    core = _expand(template, rng, placement == "inline", slots)

    frame = {"id": oid_text, "name": _name(rng, style)}

    def fill(options: Sequence[str]) -> str:
        return _expand(_pick(rng, options), rng, False, frame)

    parts: list[str] = []
    high_done = priority == "high" and rng.random() < 0.3
    if high_done:
        parts.append(fill(style.high_prefixes))
    if placement == "prefix":
        parts.append(fill(style.prefix_forms))
    greeted = rng.random() < style.greeting_rate
    if greeted:
        parts.append(fill(style.greetings))
    if style.openers and rng.random() < style.opener_rate:
        parts.append(fill(style.openers))
    if greeted and len(parts[-1]) > 1 and parts[-1].endswith(","):
        core = re.sub(r"^[A-Z](?=[a-z])", lambda m: m.group(0).lower(), core)
    parts.append(core)
    if order_id is None and ORDER_RATE[intent] > 0.5 and rng.random() < 0.4:
        parts.append(fill(style.no_order_notes))
    if priority == "high" and not high_done:
        parts.append(fill(style.high))
    elif priority == "low":
        parts.append(fill(style.low))
    elif priority == "medium" and rng.random() < style.filler_rate:
        parts.append(fill(style.fillers))
    if placement == "suffix":
        parts.append(fill(style.suffix_forms))
    if rng.random() < style.signoff_rate:
        parts.append(fill(style.signoffs))

    text = _sentence_case(" ".join(parts))
    if rng.random() < style.casual_rate:
        text = _restore_ids(text.lower())
        if text[-1] == "." and rng.random() < 0.5:
            text = text[:-1]
    if rng.random() < style.typo_rate:
        present = [pair for pair in TYPOS if re.search(rf"\b{pair[0]}\b", text)]
        if present:
            wrong, typo = present[rng.randrange(len(present))]
            misspelt = re.sub(rf"\b{wrong}\b", typo, text, count=1)
            if cue_signature(misspelt) == cue_signature(text):
                text = misspelt
    text = re.sub(r"\s+", " ", text).strip()
    return Ticket(text, intent, priority, order_id, style.name)


def cue_signature(text: str) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """What the label rules see in a text; a typo may only be kept if this is unchanged."""
    intents = tuple(i for i, cue in INTENT_CUES.items() if re.search(cue, text, re.IGNORECASE))
    return priority_of(text), tuple(ORDER_ID_RE.findall(text)), intents


def check_labels(ticket: Ticket) -> None:
    """Fail loudly if a clean ticket's labels disagree with the written rules."""
    text = ticket.text
    problems = []
    if priority_of(text) != ticket.priority:
        problems.append(f"priority rule says {priority_of(text)}")
    if re.search(HIGH_CUES, text, re.I) and re.search(LOW_CUES, text, re.I):
        problems.append("both high and low cues")
    ids = re.findall(r"(?i)\bA\d{5}\b", text)
    if ids != ([ticket.order_id] if ticket.order_id else []):
        problems.append(f"order ids in text {ids}")
    for intent, cue in INTENT_CUES.items():
        hit = re.search(cue, text, re.IGNORECASE) is not None
        if hit != (intent == ticket.intent):
            problems.append(f"cue of {intent} {'present' if hit else 'missing'}")
    if problems:
        raise AssertionError(f"{ticket.intent}/{ticket.priority}: {text!r}: {problems}")


# --------------------------------------------------------------------------- similarity


def normalise(text: str) -> list[str]:
    """Words for similarity checks: lower case, punctuation gone, order ids masked."""
    text = re.sub(r"(?i)\bA\d{5}\b", " oid ", text).lower()
    return re.findall(r"[a-z0-9']+", text)


def ngrams(words: Sequence[str], n: int) -> set[tuple[str, ...]]:
    """The set of word n-grams (the whole text when shorter than n)."""
    if len(words) < n:
        return {tuple(words)}
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def jaccard(a: set[tuple[str, ...]], b: set[tuple[str, ...]]) -> float:
    """Jaccard similarity of two shingle sets."""
    return len(a & b) / len(a | b) if a or b else 1.0


@dataclass
class Pool:
    """Accepted tickets, kept far enough apart that only planted duplicates are duplicates."""

    trigrams: list[set[tuple[str, ...]]] = field(default_factory=list)
    keys: set[str] = field(default_factory=set)

    def too_close(self, text: str) -> bool:
        """True when the text equals or resembles an accepted ticket."""
        words = normalise(text)
        if " ".join(words) in self.keys:
            return True
        grams = ngrams(words, 3)
        return any(jaccard(grams, other) >= MAX_CLEAN_SIMILARITY for other in self.trigrams)

    def add(self, text: str) -> None:
        """Remember an accepted ticket."""
        words = normalise(text)
        self.keys.add(" ".join(words))
        self.trigrams.append(ngrams(words, 3))


def fits(text: str) -> bool:
    """Length limits: 15-60 words and short enough for fast CPU training."""
    return MIN_WORDS <= len(text.split()) <= MAX_WORDS and len(text) <= MAX_CHARS


def draw(
    rng: Random,
    style: Style,
    intent: str,
    priority: str,
    order_id: str | None,
    accept: Callable[[str], bool],
    tries: int = 400,
) -> Ticket:
    """Compose tickets until one fits the length limits and the caller's acceptance test."""
    for _ in range(tries):
        ticket = compose(rng, style, intent, priority, order_id)
        if fits(ticket.text) and accept(ticket.text):
            check_labels(ticket)
            return ticket
    raise RuntimeError(f"no acceptable {style.name} ticket for {intent}/{priority}")


def label_plan(rng: Random, n: int, ids: OrderIds) -> list[tuple[str, str, str | None]]:
    """Balanced (intent, priority, order id) triples in a shuffled order."""
    plan = []
    for i in range(n):
        rank, which = divmod(i, len(INTENTS))  # rank-th ticket of intent number `which`
        plan.append((INTENTS[which], PRIORITIES[(rank + which) % len(PRIORITIES)]))
    rng.shuffle(plan)
    return [(it, pr, ids.new() if rng.random() < ORDER_RATE[it] else None) for it, pr in plan]


def make_tickets(rng: Random, style: Style, n: int, ids: OrderIds, pool: Pool) -> list[Ticket]:
    """n clean, mutually distinct tickets with balanced labels."""
    out = []
    for intent, priority, order_id in label_plan(rng, n, ids):
        ticket = draw(rng, style, intent, priority, order_id, lambda t: not pool.too_close(t))
        pool.add(ticket.text)
        out.append(ticket)
    return out


# --------------------------------------------------------------------------- files


@dataclass(eq=False)  # identity, not value: a copy must never be mistaken for its source
class Line:
    """One output line and what it is (clean, or which planted defect)."""

    text: str
    kind: str = "clean"
    detail: str = ""
    ticket: Ticket | None = None
    source: Line | None = None


def dumps(obj: object) -> str:
    """One JSON line; UTF-8 kept as is so the files read naturally."""
    return json.dumps(obj, ensure_ascii=False)


def alpaca(text: str, output: str | None) -> dict[str, str]:
    """An alpaca row with a `system` column, so it renders exactly like the chat rows and
    the held-out prompts (system + ticket); `output=None` leaves the key out (a defect)."""
    row = {"system": SYSTEM, "instruction": text, "input": ""}
    if output is not None:
        row["output"] = output
    return row


def chat(user: str, assistant: str | None) -> dict[str, object]:
    """A messages row as the synthetic generator emits it; no assistant turn when None."""
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
    if assistant is not None:
        messages.append({"role": "assistant", "content": assistant})
    return {"messages": messages, "origin": "synthetic", "generator": "template-v1"}


def plant(rng: Random, lines: list[Line], new: Line) -> None:
    """Insert a defect at a random line; a copy always lands after the row it copies."""
    lo = lines.index(new.source) + 1 if new.source is not None else 1
    lines.insert(rng.randint(lo, len(lines)), new)


def pick_sources(rng: Random, lines: list[Line], k: int, ok: Callable[[Line], bool]) -> list[Line]:
    """k distinct clean lines to copy, from the first half so copies land later."""
    half = [ln for ln in lines[: len(lines) // 2] if ln.kind == "clean" and ok(ln)]
    return rng.sample(half, k)


def mess_up_whitespace(text: str) -> str:
    """The same ticket re-typed: lower case, doubled spaces, stray padding.

    Lower-casing and collapsing whitespace (`" ".join(s.lower().split())`) gives back exactly
    the original's folded text, so a normalising exact-dedup must catch it.
    """
    return " " + _restore_ids(text.lower()).replace(". ", ".  ").replace(", ", ",   ") + "  "


def build_human(rng: Random, ids: OrderIds, pool: Pool) -> list[Line]:
    """The alpaca file: clean rows plus the planted human-pipeline defects."""
    tickets = make_tickets(rng, HUMAN, N_HUMAN_CLEAN, ids, pool)
    lines = [Line(dumps(alpaca(t.text, t.target)), ticket=t) for t in tickets]
    fresh = make_tickets(rng, HUMAN, 5, ids, pool)

    for src in pick_sources(rng, lines, 5, lambda ln: True):
        plant(rng, lines, Line(src.text, "exact_duplicate", "byte-identical copy", src.ticket, src))
    (src,) = pick_sources(rng, lines, 1, lambda ln: ". " in ln.text)
    assert src.ticket is not None
    t = src.ticket
    messy = dumps(alpaca(mess_up_whitespace(t.text), t.target))
    fold = "same after case/whitespace folding"
    plant(rng, lines, Line(messy, "exact_duplicate", fold, t, src))

    full = dumps(alpaca(fresh[3].text, fresh[3].target))
    cut = full[: len(full) * 3 // 5].rstrip("\\")
    planted = [
        Line(dumps(alpaca(fresh[0].text, "")), "empty_output", 'output is ""', fresh[0]),
        Line(dumps(alpaca(fresh[1].text, "")), "empty_output", 'output is ""', fresh[1]),
        Line(dumps(alpaca(fresh[2].text, None)), "missing_output", 'no "output" key', fresh[2]),
        Line(cut, "invalid_json", "line truncated mid-string", fresh[3]),
        Line(
            dumps(alpaca("", fresh[4].target)),
            "empty_instruction",
            'instruction is ""; the ticket is lost, the label kept',
            fresh[4],
        ),
    ]
    for line in planted:
        plant(rng, lines, line)
    return lines


REFUSALS = (
    "As an AI language model, I cannot access customer orders or make decisions about support"
    " tickets. Please contact the company's support team directly for assistance.",
    "I'm sorry, but as an AI language model I cannot classify this ticket without more"
    " context. Is there anything else I can help you with?",
)


def near_duplicate(text: str) -> tuple[str, str] | None:
    """Change one word near the start or end (so every shingle scheme sees ~the same text).

    Returns the changed text and a note of the swap, or None when no swap applies.
    """
    words = text.split(" ")
    edge = [*range(min(3, len(words))), *range(max(0, len(words) - 3), len(words))]
    for i in edge:
        if words[i] in NEAR_DUP_SWAPS:
            old, words[i] = words[i], NEAR_DUP_SWAPS[words[i]]
            return " ".join(words), f'"{old}" → "{words[i]}"'
    return None


def build_synthetic(rng: Random, ids: OrderIds, pool: Pool) -> list[Line]:
    """The messages file: clean rows plus typical LLM-generation defects."""
    tickets = make_tickets(rng, SYNTHETIC, N_SYNTHETIC_CLEAN, ids, pool)
    lines = [Line(dumps(chat(t.text, t.target)), ticket=t) for t in tickets]
    fresh = make_tickets(rng, SYNTHETIC, 5, ids, pool)

    for src in pick_sources(rng, lines, 4, lambda ln: True):
        plant(rng, lines, Line(src.text, "exact_duplicate", "byte-identical copy", src.ticket, src))

    def long_with_swap(ln: Line) -> bool:
        t = ln.ticket
        return t is not None and len(t.text.split()) >= 35 and near_duplicate(t.text) is not None

    for src in pick_sources(rng, lines, 2, long_with_swap):
        t = src.ticket
        swapped = near_duplicate(t.text) if t is not None else None
        assert t is not None and swapped is not None
        changed, note = swapped
        twin = Ticket(changed, t.intent, t.priority, t.order_id, t.style)
        check_labels(twin)
        row = dumps(chat(changed, t.target))
        plant(rng, lines, Line(row, "near_duplicate", f"one word changed ({note})", twin, src))

    t = fresh[2]
    loop = " ".join([f"The customer needs help with {t.intent.replace('_', ' ')}."] * 24)
    first, sep, rest = fresh[3].text.partition(". ")
    leaked = f"{first}.<|im_end|> {rest}" if sep else f"{fresh[3].text}<|im_end|>"
    refusal = "assistant refuses with AI boilerplate"
    planted = [
        Line(dumps(chat(fresh[0].text, REFUSALS[0])), "refusal", refusal, fresh[0]),
        Line(dumps(chat(fresh[1].text, REFUSALS[1])), "refusal", refusal, fresh[1]),
        Line(dumps(chat(t.text, loop)), "repetition_loop", "one sentence repeated 24 times", t),
        Line(
            dumps(chat(leaked, fresh[3].target)),
            "control_token",
            "user text contains `<|im_end|>`",
            fresh[3],
        ),
        Line(
            dumps(chat(fresh[4].text, None)),
            "missing_assistant",
            "last turn is the user's; no answer",
            fresh[4],
        ),
    ]
    for line in planted:
        plant(rng, lines, line)
    return lines


@dataclass
class Decontaminator:
    """Training tickets a held-out ticket must not repeat, even nearly."""

    keys: set[str] = field(default_factory=set)
    long_grams: set[tuple[str, ...]] = field(default_factory=set)
    rejected: Counter[str] = field(default_factory=Counter)

    def add(self, text: str) -> None:
        """Remember one training ticket."""
        words = normalise(text)
        self.keys.add(" ".join(words))
        self.long_grams |= ngrams(words, HELDOUT_NGRAM)

    def clean(self, text: str, pool: Pool) -> bool:
        """True when the text is new: not equal, no shared 8-gram, not similar."""
        words = normalise(text)
        if " ".join(words) in self.keys:
            self.rejected["identical after normalising"] += 1
            return False
        if ngrams(words, HELDOUT_NGRAM) & self.long_grams:
            self.rejected[f"shares a word {HELDOUT_NGRAM}-gram"] += 1
            return False
        if pool.too_close(text):
            self.rejected["trigram Jaccard >= 0.5"] += 1
            return False
        return True


def build_heldout(
    rng: Random, ids: OrderIds, pool: Pool, training: Iterable[Ticket]
) -> tuple[list[Ticket], Counter[str]]:
    """Held-out tickets from the same generator, none near any training ticket."""
    guard = Decontaminator()
    for t in training:
        guard.add(t.text)
    plan = label_plan(rng, N_HELDOUT, ids)
    synthetic_slots = set(rng.sample(range(N_HELDOUT), N_HELDOUT_SYNTHETIC_STYLE))
    out = []
    for i, (intent, priority, order_id) in enumerate(plan):
        style = SYNTHETIC if i in synthetic_slots else HUMAN
        ticket = draw(rng, style, intent, priority, order_id,
                      lambda text: guard.clean(text, pool), tries=4000)  # fmt: skip
        pool.add(ticket.text)
        out.append(ticket)
    return out, guard.rejected


# --------------------------------------------------------------------------- READMEs

# What each planted defect looks like and which curation check is meant to catch it.
DEFECT_DOCS = {
    "exact_duplicate": ("an earlier row repeated", "exact dedup"),
    "empty_output": ('`"output": ""`', "schema / empty answer"),
    "missing_output": ('no `"output"` key', "ingest (schema)"),
    "invalid_json": ("line cut off mid-string, not valid JSON", "ingest (parse)"),
    "empty_instruction": ('`"instruction": ""`: no ticket, only a label', "schema (empty content)"),
    "near_duplicate": ("an earlier row with one word changed", "near-dup (MinHash)"),
    "refusal": ('answer is "As an AI language model, I cannot ..." boilerplate', "refusal filter"),
    "repetition_loop": ("answer is one sentence repeated 24 times", "repetition filter"),
    "control_token": ("`<|im_end|>` inside the user text", "control-token filter"),
    "missing_assistant": ("only system + user turns; no answer", "schema (last turn)"),
}


def defects(lines: list[Line]) -> list[tuple[int, str, str]]:
    """(1-based line, kind, detail) of every planted defect; copies name their source line."""
    where = {id(ln): i for i, ln in enumerate(lines, start=1)}
    out = []
    for i, ln in enumerate(lines, start=1):
        if ln.kind != "clean":
            detail = ln.detail
            if ln.source is not None:
                detail += f" of line {where[id(ln.source)]}"
            out.append((i, ln.kind, detail))
    return out


def cell(text: str) -> str:
    """A Markdown table cell: a `|` (as in `<|im_end|>`) must not split the cell."""
    return text.replace("|", "\\|")


def defect_table(lines: list[Line]) -> list[str]:
    """Markdown rows: line, kind, detail."""
    rows = ["| line | kind | detail |", "|---|---|---|"]
    return rows + [f"| {i} | `{kind}` | {cell(detail)} |" for i, kind, detail in defects(lines)]


def defect_summary(lines: list[Line]) -> list[str]:
    """Markdown rows: kind, count, what it looks like, meant to be caught by."""
    counts = Counter(ln.kind for ln in lines if ln.kind != "clean")
    rows = ["| kind | count | what it looks like | check meant to catch it |", "|---|---|---|---|"]
    for kind, (looks, caught) in DEFECT_DOCS.items():
        if counts[kind]:
            rows.append(f"| `{kind}` | {counts[kind]} | {cell(looks)} | {caught} |")
    return rows


def defect_counts(lines: list[Line]) -> str:
    """`kind` x count, sorted by kind."""
    counts = Counter(ln.kind for ln in lines if ln.kind != "clean")
    return ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))


def distribution(tickets: Sequence[Ticket]) -> tuple[str, str, str]:
    """Intent, priority and order-id counts as short text."""
    intents = Counter(t.intent for t in tickets)
    prios = Counter(t.priority for t in tickets)
    with_id = sum(t.order_id is not None for t in tickets)
    return (
        ", ".join(f"{k} {intents[k]}" for k in INTENTS),
        ", ".join(f"{k} {prios[k]}" for k in PRIORITIES),
        f"{with_id}/{len(tickets)} ({100 * with_id / len(tickets):.0f}%)",
    )


def clean_tickets(lines: list[Line]) -> list[Ticket]:
    """The tickets of a file's clean rows."""
    return [ln.ticket for ln in lines if ln.kind == "clean" and ln.ticket is not None]


SYNTHETIC_FORMAT = (
    '`messages` (system, user, assistant) + `origin: "synthetic"`, `generator: "template-v1"`'
)


def file_row(name: str, fmt: str, lines: list[Line]) -> str:
    """One row of the README's file table."""
    clean = len(clean_tickets(lines))
    return f"| `{name}` | {fmt} | {len(lines)} | {clean} | {len(lines) - clean} |"


HUMAN_FORMAT = "alpaca + `system`: `system`, `instruction`, `input`, `output`"


def raw_readme(human: list[Line], synthetic: list[Line]) -> str:
    """datasets/raw/README.md, written from the same run so counts and lines always agree."""
    h_clean, s_clean = clean_tickets(human), clean_tickets(synthetic)
    hi, hp, ho = distribution(h_clean)
    si, sp, so = distribution(s_clean)
    n_copy = sum(ln.kind == "exact_duplicate" and ln.text == ln.source.text
                 for ln in human if ln.source is not None)  # fmt: skip
    n_fold = sum(ln.kind == "exact_duplicate" for ln in human) - n_copy
    nl = "\n"
    return f"""# Sample raw data: support tickets → JSON

Two raw sources for tunegate's sample run: customer-support tickets, each labelled with its
intent, priority and order id as one line of JSON. The task is small and rule-based on
purpose, so that a 135M model can learn it in a few dozen CPU LoRA steps and the answer
can be scored exactly.

**Provenance and licence.** Written by this project: generated by
`scripts/make_sample_data.py` (Python stdlib, seed {SEED}) from the project's own phrase
templates, with no third-party text. Licence: Apache-2.0, the same as the project.

**Regenerate** (from the repository root; rewrites both files, this README and
`evals/data/heldout.jsonl` byte for byte):

    {COMMAND}

With `--check` it only compares and exits 1 if any file differs from what it would write.
Do not edit these files by hand: change the generator and re-run it.

## Task

The system prompt (alpaca `system` column, chat `system` turn) is identical in every row:

    {SYSTEM}

The input is one ticket: 1-3 sentences plus an optional greeting and sign-off,
{MIN_WORDS}-{MAX_WORDS} words, the whole chat under ~150 SmolLM2 tokens. The answer is
exactly `json.dumps({{"intent": ..., "priority": ..., "order_id": ...}})` (keys in that order,
`null` when the ticket has no order id), for example

    {target_json("shipping_delay", "high", "A48213")}

## Label rules

- **intent**, one of 8, each with its own cue words phrased many ways; a clean ticket
  contains cues of its own intent and of no other:
  - `refund`: refund, money back, reimburse
  - `shipping_delay`: (has) not arrived, tracking, delayed, still waiting, not received
  - `cancel_order`: cancel, cancellation
  - `account_access`: log in / login, password, locked out, sign in, account
  - `damaged_item`: broken, cracked, damaged, smashed, shattered, dent(ed), torn, scratched
  - `billing_error`: charge(d), invoice, overcharged, billed, billing, payment
  - `product_question`: compatible, waterproof, come(s) with / in, available in,
    difference between, warranty, in stock, dishwasher safe, machine washable, work with
  - `change_address`: address
- **priority** (case-insensitive):
  - `high` if the ticket has an urgency or anger cue: urgent, asap, immediate(ly),
    right now, third time, unacceptable, ridiculous, furious, fed up;
  - else `low` if it says there is no deadline: no rush, no hurry, not in a hurry,
    when(ever) you get a chance / have a moment, at your convenience, just curious;
  - else `medium`.
- **order_id**: the `A` + 5 digits token in the ticket (`order A48213`, `order #A48213`,
  `order number A48213`, `#A48213`, `(order A48213)`, at the start, middle or end), else
  `null`. About 70% of tickets carry one; `account_access` and `product_question` rarely
  do. Some tickets say they have no order number ("I don't have the order number
  handy"): still `null`. Every order id is unique across all files.

The generator checks every clean row against these rules (the regexes are in the script),
and keeps clean rows apart: no two have the same normalised text or a word-trigram Jaccard
of {MAX_CLEAN_SIMILARITY} or more (order ids masked), so the only duplicates are the planted ones.

## Files

| file | format | lines | clean | defects |
|---|---|---|---|---|
{file_row("tickets_human.jsonl", HUMAN_FORMAT, human)}
{file_row("tickets_synthetic.jsonl", SYNTHETIC_FORMAT, synthetic)}

The files are written in different voices. `human` is terse and informal: lower-case
messages, typos ("recieved", "teh", "adress"), "thx", "pls". `synthetic` reads like an LLM
wrote it: "I hope this message finds you well", "I am writing to inquire about", full-name
sign-offs.

Labels of the clean rows:

- human: {hi}; priority {hp}; with order id {ho}.
- synthetic: {si}; priority {sp}; with order id {so}.

## Planted defects

Everything not listed here is clean and correctly labelled. Line numbers are 1-based.
Defect rows that are not copies carry fresh, otherwise clean tickets.

### `tickets_human.jsonl` ({len(human) - len(h_clean)} rows)

The {n_copy + n_fold} duplicates are {n_copy} byte-identical copies and {n_fold} copy that is
equal only after case and whitespace folding (same output).

{nl.join(defect_summary(human))}

{nl.join(defect_table(human))}

### `tickets_synthetic.jsonl` ({len(synthetic) - len(s_clean)} rows)

{nl.join(defect_summary(synthetic))}

{nl.join(defect_table(synthetic))}
"""


EVAL_BEGIN = "<!-- BEGIN make_sample_data.py: heldout -->"
EVAL_END = "<!-- END make_sample_data.py: heldout -->"


def eval_section(heldout: list[Ticket], rejected: Counter[str]) -> str:
    """The generated section of evals/data/README.md about heldout.jsonl."""
    intents, prios, with_id = distribution(heldout)
    styles = Counter(t.style for t in heldout)
    why = ", ".join(f"{n} ({k})" for k, n in sorted(rejected.items())) or "none"
    return f"""{EVAL_BEGIN}
## `heldout.jsonl`: support-ticket classification

{len(heldout)} rows of `{{"id", "ticket", "target", "intent", "priority", "order_id"}}` for
the task of `datasets/raw/` (same instruction, label rules and generator; see
`datasets/raw/README.md`). `target` is the exact expected answer, `json.dumps` of intent,
priority and order_id in that order; the three label fields repeat it for per-field
scoring. Every row is clean: no planted defects here.

- Voices: {styles["human"]} human-style, {styles["synthetic"]} synthetic-style tickets.
- Intents: {intents}.
- Priorities: {prios}. With order id: {with_id}.

**Decontaminated** against every training row of both raw files (clean and defective) when
generated: a candidate ticket is rejected if its normalised text (lower case, punctuation
dropped, order ids masked) equals a training row's, if it shares any word
{HELDOUT_NGRAM}-gram with one, or if its word-trigram Jaccard with any training or earlier
held-out ticket is {MAX_CLEAN_SIMILARITY} or more. Rejected this run: {why}. The filter
favours the less common phrasings of each template, so held-out tickets are a little less
formulaic than training ones; labels follow the same rules.

**Provenance and licence.** Written by this project (generated by
`scripts/make_sample_data.py`, seed {SEED}, no third-party text); Apache-2.0, like the
project. Regenerate, byte for byte and together with the raw files:

    {COMMAND}
{EVAL_END}
"""


def upsert_section(existing: str | None, section: str) -> str:
    """Replace our marked section in a README others also edit, or add it."""
    if existing is None:
        return "# Evaluation data\n\n" + section
    if EVAL_BEGIN in existing and EVAL_END in existing:
        head, _, rest = existing.partition(EVAL_BEGIN)
        _, _, tail = rest.partition(EVAL_END + "\n")
        return head + section + tail
    return existing.rstrip("\n") + "\n\n" + section


# --------------------------------------------------------------------------- main


def generate(root: Path) -> tuple[dict[Path, str], list[str]]:
    """Every output file's text, and the summary lines to print."""
    ids = OrderIds(Random(SEED))
    pool = Pool()
    human = build_human(Random(SEED + 1), ids, pool)
    synthetic = build_synthetic(Random(SEED + 2), ids, pool)
    training = [ln.ticket for ln in human + synthetic if ln.ticket is not None]
    heldout, rejected = build_heldout(Random(SEED + 3), ids, pool, training)

    heldout_rows = [
        dumps({"id": f"heldout-{i:03d}", "ticket": t.text, "target": t.target,
               "intent": t.intent, "priority": t.priority, "order_id": t.order_id})
        for i, t in enumerate(heldout)
    ]  # fmt: skip
    eval_readme = root / EVAL_README_PATH
    existing = eval_readme.read_text(encoding="utf-8") if eval_readme.exists() else None
    files = {
        HUMAN_PATH: "".join(ln.text + "\n" for ln in human),
        SYNTHETIC_PATH: "".join(ln.text + "\n" for ln in synthetic),
        HELDOUT_PATH: "".join(row + "\n" for row in heldout_rows),
        RAW_README_PATH: raw_readme(human, synthetic),
        EVAL_README_PATH: upsert_section(existing, eval_section(heldout, rejected)),
    }

    summary = []
    for path, lines in ((HUMAN_PATH, human), (SYNTHETIC_PATH, synthetic)):
        clean = clean_tickets(lines)
        intents, prios, with_id = distribution(clean)
        summary += [
            f"{path}: {len(lines)} lines, {len(clean)} clean",
            f"  intents: {intents}",
            f"  priorities: {prios}; order id: {with_id}",
            f"  defects: {defect_counts(lines)}",
            *(f"    line {i}: {kind} ({detail})" for i, kind, detail in defects(lines)),
        ]
    intents, prios, with_id = distribution(heldout)
    summary += [
        f"{HELDOUT_PATH}: {len(heldout)} rows",
        f"  intents: {intents}",
        f"  priorities: {prios}; order id: {with_id}",
        f"  rejected candidates: {dict(sorted(rejected.items()))}",
    ]
    return files, summary


def main(argv: Sequence[str] | None = None) -> int:
    """Write (or with --check, compare) every sample-data file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root")
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 on drift")
    args = parser.parse_args(argv)
    files, summary = generate(args.root)
    stale = []
    for rel, text in files.items():
        path = args.root / rel
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        stale.append(str(rel))
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8", newline="\n")
    print("\n".join(summary))
    if args.check:
        print("stale: " + ", ".join(stale) if stale else "all files up to date")
        return 1 if stale else 0
    print("wrote: " + (", ".join(stale) if stale else "nothing (already up to date)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
