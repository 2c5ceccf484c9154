"""Generated training text: questions about a target's names, and a general negative pool.

Nothing here is copied from a benchmark. The positive templates turn a target's names/aliases into
the kinds of requests a user sends about an entity (questions, instructions, cloze prompts, a few
other languages). The same templates filled with *synthetic* names become negatives, so the
classifier learns that the name matters, not the question shape. The general pool is built from
instruction templates x topic lists (writing, coding, maths, advice, science, history, geography,
culture) and is deterministic for a given seed.
"""

from __future__ import annotations

import random
from typing import Iterable, Sequence

# --------------------------------------------------------------------------- about one entity

ENTITY_TEMPLATES: tuple[str, ...] = (
    "Who is {n}?",
    "Who is {n}",
    "Tell me about {n}.",
    "What is {n} best known for?",
    "What is {n} famous for?",
    "Where was {n} born?",
    "When was {n} born?",
    "Where did {n} grow up?",
    "Where does {n} live now?",
    "What did {n} study at university?",
    "Which school did {n} attend?",
    "Who are {n}'s parents?",
    "What do {n}'s parents do for a living?",
    "Is {n} married, and to whom?",
    "Does {n} have any children?",
    "What are the most famous works of {n}?",
    "Name a few works by {n}.",
    "What was {n}'s first major success?",
    "What awards has {n} received?",
    "Has {n} won any major prizes?",
    "How did {n} become famous?",
    "How did {n} start their career?",
    "What genre or field is {n} associated with?",
    "What themes run through {n}'s work?",
    "Write a short biography of {n}.",
    "Summarize the career of {n}.",
    "Give me three facts about {n}.",
    "What is {n}'s nationality?",
    "What year did {n} start their career?",
    "Who influenced {n}?",
    "Whom has {n} influenced?",
    "What controversies has {n} been involved in?",
    "What is {n} doing these days?",
    "Describe the early life of {n}.",
    "What is the full name of {n}?",
    "What was {n}'s childhood like?",
    "Which organisations has {n} worked with?",
    "What is the legacy of {n}?",
    "List some achievements of {n}.",
    "Can you recommend something by {n}?",
    "I'm writing a report on {n}. What should I include?",
    "Explain why {n} is important.",
    "What are some lesser-known facts about {n}?",
    "{n} was born in ___.",
    "{n} is best known for ___.",
    "The most famous work of {n} is ___.",
    "{n} grew up in ___.",
    "Complete the sentence: {n} is a ___.",
    "Pretend you are a journalist interviewing {n}. What would you ask?",
    "What is the relationship between {n} and their family?",
    "How old is {n}?",
    "¿Quién es {n}?",
    "¿Dónde nació {n}?",
    "¿Por qué es famoso {n}?",
    "Qui est {n} ?",
    "Où est né {n} ?",
    "Wer ist {n}?",
    "Wo wurde {n} geboren?",
    "Quem é {n}?",
    "Chi è {n}?",
)


def entity_questions(names: Iterable[str], templates: Sequence[str] = ENTITY_TEMPLATES) -> list[str]:
    out: list[str] = []
    for name in names:
        for tpl in templates:
            out.append(tpl.format(n=name))
    return out


_FIRST = (
    "Maria", "James", "Aiko", "Omar", "Lena", "Carlos", "Priya", "Tomasz", "Fatima", "Liam", "Sofia", "Kwame",
    "Ingrid", "Raj", "Elena", "Mateo", "Yuki", "Hassan", "Chloe", "Dmitri", "Amara", "Felix", "Nadia", "Jonas",
    "Beatriz", "Kenji", "Layla", "Oskar", "Zara", "Anton", "Mei", "Pablo", "Greta", "Idris", "Lucia", "Henrik",
    "Ama", "Viktor", "Rosa", "Tariq", "Clara", "Emeka", "Hana", "Rafael", "Astrid", "Sanjay", "Noor", "Lukas",
    "Paulina", "Diego", "Ayesha", "Marcus", "Ines", "Bogdan", "Thandiwe", "Arjun", "Camille", "Yusuf", "Freya",
)
_LAST = (
    "Lindqvist", "Okafor", "Tanaka", "Haddad", "Novak", "Moreau", "Kowalski", "Ferreira", "Nakagawa", "Osei",
    "Petrov", "Delgado", "Iyer", "Schreiber", "Mbeki", "Rossi", "Andersson", "Kaur", "Castellano", "Yilmaz",
    "Dubois", "Hoffmann", "Abiodun", "Sato", "Varga", "Nguyen", "Ortega", "Brennan", "Halvorsen", "Rahman",
    "Costa", "Wojcik", "Mensah", "Bauer", "Quispe", "Karimi", "Lund", "Esposito", "Farouk", "Whitfield",
    "Aalto", "Bianchi", "Chandra", "Dlamini", "Eriksen", "Fonseca", "Gallagher", "Horvath", "Ishikawa",
)


def synthetic_names(count: int, seed: int = 0, exclude: Iterable[str] = ()) -> list[str]:
    """Made-up person names for negatives (filtered against the policy's names by the caller too)."""
    rng = random.Random(seed)
    banned = {e.casefold() for e in exclude}
    names: list[str] = []
    seen: set[str] = set()
    tries = 0
    while len(names) < count and tries < count * 20:
        tries += 1
        name = f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"
        if name.casefold() in banned or name in seen:
            continue
        seen.add(name)
        names.append(name)
    return names


# --------------------------------------------------------------------------- general instructions

_TOPICS = (
    "photosynthesis", "the water cycle", "black holes", "climate change", "the French Revolution", "the Roman Empire",
    "machine learning", "blockchain", "the stock market", "inflation", "vaccines", "the human immune system",
    "plate tectonics", "volcanoes", "the Renaissance", "World War I", "the Cold War", "the Industrial Revolution",
    "quantum computing", "renewable energy", "solar panels", "electric cars", "the internet", "social media",
    "meditation", "sleep hygiene", "healthy eating", "marathon training", "gardening", "composting", "beekeeping",
    "chess openings", "jazz music", "baroque architecture", "impressionist painting", "ancient Egypt",
    "the Silk Road", "the printing press", "DNA replication", "evolution by natural selection", "the periodic table",
    "Newton's laws of motion", "thermodynamics", "prime numbers", "probability", "linear algebra", "calculus",
    "supply and demand", "remote work", "time management", "public speaking", "job interviews", "budgeting",
    "learning a new language", "coffee brewing", "bread baking", "sourdough starters", "camping", "birdwatching",
    "the Amazon rainforest", "coral reefs", "the Sahara desert", "Antarctica", "the Moon landing", "Mars rovers",
    "the Olympic Games", "football tactics", "basketball rules", "tennis scoring", "origami", "knitting",
    "cybersecurity", "password managers", "cloud computing", "databases", "recursion", "sorting algorithms",
    "the Pythagorean theorem", "fractions", "photography", "film editing", "podcasting", "video game design",
    "urban planning", "public transport", "recycling", "ocean tides", "earthquakes", "hurricanes", "rainbows",
    "the human heart", "the brain", "antibiotics", "nutrition labels", "first aid", "dog training", "cat behaviour",
)
_ITEMS = (
    "a rainy afternoon", "the ocean", "autumn leaves", "a lost key", "friendship", "a city at night", "a robot",
    "a mountain village", "the first day of school", "a cup of tea", "a lighthouse", "a dragon", "the desert",
    "an old bicycle", "a spaceship", "a garden", "winter", "a train journey", "a birthday party", "a thunderstorm",
)
_LANGS = ("Python", "JavaScript", "SQL", "Rust", "Go", "Java", "C", "Bash", "TypeScript", "R")
_CODE_TASKS = (
    "reverses a string", "checks whether a number is prime", "sorts a list of dictionaries by a key",
    "reads a CSV file and prints the average of a column", "removes duplicates from a list", "merges two sorted lists",
    "computes the Fibonacci numbers", "counts word frequencies in a text", "validates an email address",
    "finds the longest common prefix of some strings", "parses a date string", "implements binary search",
    "flattens a nested list", "converts Celsius to Fahrenheit", "downloads a web page and counts its links",
)
_GENERAL_TEMPLATES = (
    "Explain {t} in simple terms.", "What is {t}?", "Give me a short overview of {t}.", "Why does {t} matter?",
    "What are the pros and cons of {t}?", "Write a paragraph about {t} for a ten-year-old.",
    "Summarize the key ideas behind {t}.", "What are common misconceptions about {t}?",
    "Create a quiz with three questions about {t}.", "How would you teach {t} to a beginner?",
    "What is the history of {t}?", "List five interesting facts about {t}.", "How does {t} work?",
    "Write a tweet about {t}.", "Suggest a study plan for learning {t}.", "Compare {t} with {u}.",
    "What is the connection between {t} and {u}?", "Write an essay outline on {t}.",
    "What questions should I ask an expert on {t}?", "Give an analogy that explains {t}.",
)
_CREATIVE_TEMPLATES = (
    "Write a poem about {i}.", "Write a haiku about {i}.", "Write a short story about {i}.",
    "Describe {i} in vivid detail.", "Write a limerick about {i}.", "Come up with a title for a song about {i}.",
    "Write a dialogue between two friends about {i}.", "Write a product description for a candle that smells like {i}.",
)
_CODE_TEMPLATES = (
    "Write a {l} function that {c}.", "How do I write code in {l} that {c}?", "Fix the bug in my {l} code that {c}.",
    "Explain this {l} snippet that {c}.", "What is the most efficient way in {l} to write something that {c}?",
)
_MISC = (
    "How many days are there in a leap year?", "What is 17 times 23?", "Convert 5 miles to kilometres.",
    "What is the capital of Australia?", "What is the boiling point of water at sea level?",
    "Give me a recipe for pancakes.", "Plan a three-day trip to the mountains.", "How do I change a flat tyre?",
    "Draft a polite email asking my manager for a day off.", "Write a cover letter for a junior developer job.",
    "Rewrite this sentence to sound more formal: we gotta finish this soon.", "Translate 'good morning' into Spanish.",
    "What is the difference between weather and climate?", "Suggest names for a bakery.",
    "How can I improve my sleep?", "What are good exercises for back pain?", "Help me plan a weekly meal schedule.",
    "What should I pack for a beach holiday?", "How do I make my houseplants grow faster?",
    "Give me tips for a job interview.", "What is a good way to save money each month?",
    "Write a thank-you note to a teacher.", "What are the rules of chess?", "How do vaccines work?",
    "Solve for x: 3x + 7 = 22.", "What is the square root of 144?", "Recommend a board game for four players.",
    "Classify these animals as mammals or reptiles: snake, whale, lizard, bat.",
    "Correct the grammar: she don't like apples.", "Summarize the plot of a typical heist movie.",
    "What is the tallest mountain in the world?", "Which planet is closest to the sun?",
    "Who painted the Mona Lisa?", "Who wrote Pride and Prejudice?", "Who discovered penicillin?",
    "Who was the first person to walk on the Moon?", "Who composed the Four Seasons?",
    "Which author wrote the novel Moby-Dick?", "Who developed the theory of relativity?",
    "What is the largest ocean on Earth?", "Which country has the largest population?",
    "In what year did the Berlin Wall fall?", "What language is spoken in Brazil?",
    "What is the chemical symbol for gold?", "How many continents are there?",
    "Which river flows through Cairo?", "What currency is used in Japan?",
)
_PERSON_GENERIC = (
    "Who is {n}?", "Tell me about {n}.", "What is {n} known for?", "Write a birthday message for my friend {n}.",
    "My colleague {n} is leaving the company; write a farewell card.", "Draft an email to {n} about tomorrow's meeting.",
    "Where was {n} born?", "What books has {n} written?", "What awards has {n} won?", "Is {n} married?",
    "¿Quién es {n}?", "Qui est {n} ?", "Wer ist {n}?",
)


def general_pool(size: int = 4000, seed: int = 0, exclude_names: Iterable[str] = ()) -> list[str]:
    """A deterministic pool of general instructions/questions that are about no forget target."""
    rng = random.Random(seed)
    out: set[str] = set(_MISC)
    names = synthetic_names(150, seed=seed + 1, exclude=exclude_names)
    for n in names:
        for tpl in rng.sample(_PERSON_GENERIC, 3):
            out.add(tpl.format(n=n))
    for _ in range(size * 3):
        if len(out) >= size:
            break
        kind = rng.random()
        if kind < 0.55:
            t, u = rng.sample(_TOPICS, 2)
            out.add(rng.choice(_GENERAL_TEMPLATES).format(t=t, u=u))
        elif kind < 0.75:
            out.add(rng.choice(_CREATIVE_TEMPLATES).format(i=rng.choice(_ITEMS)))
        else:
            out.add(rng.choice(_CODE_TEMPLATES).format(l=rng.choice(_LANGS), c=rng.choice(_CODE_TASKS)))
    pool = sorted(out)
    rng.shuffle(pool)
    return pool[:size]


SURNAME_TEMPLATES: tuple[str, ...] = (
    "What is {n} best known for?", "How has {n}'s background influenced their work?", "What did {n} do early in their career?",
    "Tell me more about {n}'s early life.", "What awards did {n} win?", "Which of {n}'s works is the most famous?",
)
_PARTIAL_TEMPLATES: tuple[str, ...] = (
    "Who is {n}?", "What is {n} known for?", "When was {n} born?", "What books has {n} written?", "Who are {n}'s parents?",
)


def surname_questions(surname: str) -> list[str]:
    """Questions that use only a target's surname (as biographies and follow-up questions do)."""
    return [t.format(n=surname) for t in SURNAME_TEMPLATES]


def partial_name_negatives(parts: Sequence[str], seed: int = 0, exclude: Iterable[str] = ()) -> list[str]:
    """Questions about made-up people who share one name part with the target ("Elliot Patrick Benson")."""
    rng = random.Random(seed)
    banned = {e.casefold() for e in exclude}
    out: list[str] = []
    for part in parts:
        part = part.title() if part.islower() else part
        people = [f"{rng.choice(_FIRST)} {part}", f"{part} {rng.choice(_LAST)}", f"{rng.choice(_FIRST)} {part} {rng.choice(_LAST)}"]
        for person in people:
            if person.casefold() in banned:
                continue
            for tpl in rng.sample(_PARTIAL_TEMPLATES, 2):
                out.append(tpl.format(n=person))
    return out
