"""The words the rules know: determiners, attributes, things worn, compound nouns, style words.

Kept as plain word sets so that a reader can see, and extend, exactly what the planner
recognises. Nothing here is a model: a word is in a list or it is not.
"""

from __future__ import annotations


def wordset(text: str) -> frozenset[str]:
    """A set of the whitespace-separated words of ``text``."""
    return frozenset(text.split())


NUMBERS = wordset("one two three four five six seven eight nine ten eleven twelve")

#: Words that open a noun phrase ("a", "the", "two", "some").
DETERMINERS = NUMBERS | wordset(
    "a an the some several many his her their my our its this that these those another each few"
)

#: Possessives: a phrase that opens with one names a part of something already mentioned.
POSSESSIVES = wordset("his her their its my our your")

COLOURS = wordset(
    "red orange yellow green blue purple pink brown black white gray grey silver gold golden "
    "violet indigo cyan magenta teal turquoise beige maroon navy crimson scarlet lime olive "
    "tan ivory amber emerald lavender"
)
#: Attribute words whose binding T2I-CompBench tests besides colour: texture and shape.
TEXTURES = wordset(
    "wooden metallic metal plastic glass leather fabric fluffy furry rubber stone marble "
    "ceramic velvet woolen wool silk paper cardboard concrete brick steel iron"
)
SHAPES = wordset(
    "round square rectangular triangular oval circular spherical cubic cylindrical "
    "hexagonal heart-shaped star-shaped"
)
ATTRIBUTES = COLOURS | TEXTURES | SHAPES
#: Attribute words that are nouns too: "an orange", "a glass", "a gold medal".
NOUN_ATTRIBUTES = wordset(
    "orange lime olive gold silver glass metal paper stone marble brick steel iron plastic wool "
    "silk leather rubber fabric concrete cardboard ivory amber emerald"
)
#: Adjectives that open a comma-separated list of adjectives: "a big, brown bowl" is one bowl.
ADJECTIVES = (ATTRIBUTES - NOUN_ATTRIBUTES) | wordset(
    "big small large little tiny huge giant tall short long old young new cute shiny bright "
    "dark pale heavy soft thin fat wide narrow"
)

#: Nouns that follow "and"/"in"/"with" as part of an entity's description rather than as a new
#: entity or a setting: "a girl with a hat and a scarf", "a man in a red coat".
WORN = wordset(
    "dress shirt t-shirt coat jacket hat cap suit hoodie raincoat uniform robe sweater skirt jeans "
    "trousers pants armor armour gown scarf kimono tuxedo costume boots shoes glasses sunglasses "
    "clothes outfit cloak apron vest pajamas overalls helmet mask tie bow necklace earrings "
    "gloves crown veil braid ponytail beard moustache mustache eyes hair smile collar bandana "
    "backpack umbrella"
)

#: Multi-word nouns kept whole (COCO's class names and a few more that prompts often use).
COMPOUND_NOUNS: tuple[str, ...] = (
    "fire truck", "fire hydrant", "stop sign", "parking meter", "traffic light", "teddy bear",
    "hair drier", "hair dryer", "wine glass", "coffee mug", "coffee cup", "tea cup",
    "cell phone", "mobile phone", "hot dog", "baseball bat", "baseball glove", "tennis racket",
    "sports ball", "potted plant", "dining table", "coffee table", "tv monitor", "teddy bears",
    "shower curtain", "ice cream", "soccer ball", "basketball ball", "polar bear",
    "christmas tree", "palm tree", "street lamp", "race car", "sports car", "police car",
    "school bus", "wine bottle", "water bottle", "paper plane", "guinea pig", "golden retriever",
    "alarm clock", "rubber duck", "cowboy hat", "table lamp", "desk lamp", "garden gnome",
    "living room", "dining room", "washing machine", "swimming pool", "sewing machine",
    "frying pan", "rolling pin", "sleeping bag", "fishing rod", "walking stick",
    "computer mouse", "computer keyboard", "tv remote", "ceiling fan",
)  # fmt: skip

#: Nouns that end in "-ing" but are no participle ("a building in a park", "a dining table").
ING_NOUNS: tuple[str, ...] = (
    *sorted(
        wordset(
            "building painting ceiling king ring wing thing string evening morning wedding "
            "pudding clothing sibling swing spring earring duckling seedling dumpling"
        )
    ),
    *(c for c in COMPOUND_NOUNS if c.split()[0].endswith("ing")),
)

#: Nouns for a place that contains the things after "with": "a bathroom with green tile and a
#: red shower curtain" describes two things in a bathroom.
SCENE_NOUNS = wordset(
    "room bathroom kitchen bedroom office classroom hallway garden park street city beach "
    "living-room library restaurant cafe shop store table desk shelf yard field forest lot "
    "bath-room"
)

#: Words after which a phrase describes its own entity ("a girl with a hat and a scarf", "a
#: man in a red coat"): worn things after "and" continue it rather than start a new entity.
OWN_VERBS = wordset("wearing holding carrying having with who that in has have wears holds")

#: Third-person verbs of a described clause and the participle a region prompt uses instead
#: ("the boy on the left wears a green cap" → "a boy wearing a green cap").
VERB_FORMS = {
    "wears": "wearing",
    "holds": "holding",
    "has": "with",
    "carries": "carrying",
    "plays": "playing",
    "reads": "reading",
    "rides": "riding",
    "eats": "eating",
    "drinks": "drinking",
    "sits": "sitting",
    "stands": "standing",
    "looks": "looking",
    "smiles": "smiling",
    "waves": "waving",
    "uses": "using",
    "sings": "singing",
    "runs": "running",
    "sleeps": "sleeping",
    "writes": "writing",
    "laughs": "laughing",
}

#: Verbs of a plural subject that say where a group is ("a cup and a plate sit on a tray"),
#: and the participle every region gets instead ("a cup, sitting on a tray").
GROUP_VERBS = {
    "sit": "sitting",
    "lie": "lying",
    "lay": "lying",
    "rest": "resting",
    "stand": "standing",
    "float": "floating",
    "hang": "hanging",
    "play": "playing",
    "sleep": "sleeping",
    "wait": "waiting",
    "await": "waiting",
    "gleam": "gleaming",
    "glide": "gliding",
    "drift": "drifting",
    "lounge": "lounging",
    "swim": "swimming",
    "fly": "flying",
    "graze": "grazing",
}

STYLE_NOUNS = (
    r"photo(?:graph)?|painting|drawing|illustration|render(?:ing)?|sketch|watercolou?r|"
    r"picture|image|artwork|poster|shot|close-up|closeup|3d\s+render"
)
STYLE_WORDS = (
    r"style|painting|photo(?:graph|graphy)?|photorealistic|realistic|illustration|render|"
    r"rendering|4k|8k|hd|hdr|uhd|detailed|cinematic|lighting|watercolou?r|sketch|anime|art|"
    r"artwork|oil|pastel|bokeh|masterpiece|octane|unreal|studio|film|35mm|dslr|sharp|focus|"
    r"vibrant|pixel|lowpoly|low-poly|isometric|minimalist|surreal"
)
