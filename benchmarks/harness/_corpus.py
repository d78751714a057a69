"""A small, fixed English corpus: the raw material of the realistic benchmark workload.

Each topic holds questions a user might ask and sentences a retrieved chunk might contain, so
chunks assembled from them read like real retrieval results (same-topic and off-topic
passages) while the benchmark stays offline and reproducible.
"""

from __future__ import annotations

__all__ = ["TOPICS"]

TOPICS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "rag": (
        (
            "how does retrieval augmented generation reduce hallucinations?",
            "what is the role of a reranker in a rag pipeline?",
        ),
        (
            "Retrieval augmented generation first searches a document store for passages that "
            "are related to the user's question.",
            "The retrieved passages are placed in the prompt so that the language model can "
            "ground its answer in them instead of relying on memorised facts.",
            "A bi-encoder embeds the query and every chunk separately, which makes the first "
            "retrieval stage fast enough to search millions of documents.",
            "A cross-encoder reads the query and a passage together and produces a single "
            "relevance score, which is slower but considerably more accurate.",
            "Most production systems retrieve fifty to a hundred candidates and let a reranker "
            "choose the handful that actually reach the prompt.",
            "Chunk size matters: passages of a few hundred tokens keep enough context without "
            "diluting the part that answers the question.",
            "When the reranker pushes irrelevant passages out of the prompt, the model has "
            "fewer opportunities to invent details that no source supports.",
            "Evaluation usually compares the ranked list with human relevance judgements using "
            "metrics such as recall at ten or normalised discounted cumulative gain.",
            "Caching the scores of frequent questions avoids recomputing the same expensive "
            "cross-encoder passes for every user who asks them.",
            "Hybrid retrieval combines keyword search with dense vectors, because exact terms "
            "such as product codes are often missed by embeddings alone.",
        ),
    ),
    "weather": (
        (
            "why does it rain more on the western side of mountains?",
            "how do meteorologists forecast thunderstorms?",
        ),
        (
            "Moist air that is pushed up the slope of a mountain range cools as it rises, and "
            "its water vapour condenses into clouds and rain.",
            "By the time the air descends on the far side it has lost much of its moisture, "
            "which is why rain shadows form deserts behind high ridges.",
            "Thunderstorms need warm humid air near the ground, cooler air above it and some "
            "trigger, such as a cold front, that starts the air rising.",
            "Forecasters feed observations from satellites, radar, balloons and ground "
            "stations into numerical models that simulate the atmosphere.",
            "Ensemble forecasts run the same model many times with slightly different starting "
            "conditions to estimate how certain a prediction is.",
            "Sea breezes develop on sunny afternoons because the land heats up faster than the "
            "water next to it.",
            "Fog forms on clear, calm nights when the ground radiates heat away and the air "
            "just above it cools to its dew point.",
            "A falling barometer often signals an approaching low pressure system and the "
            "unsettled weather that comes with it.",
            "Hail grows inside storm clouds whose updrafts are strong enough to carry ice "
            "pellets up and down through layers of supercooled water.",
        ),
    ),
    "cooking": (
        (
            "why should bread dough rest before baking?",
            "how do you keep pasta from sticking together?",
        ),
        (
            "Kneading develops gluten, a network of proteins that traps the gas produced by "
            "yeast and lets the dough rise.",
            "Letting the dough rest relaxes the gluten, so it can be shaped without springing "
            "back, and gives the yeast time to produce flavour.",
            "Pasta sticks when starch released from its surface glues neighbouring pieces "
            "together, so it should be cooked in plenty of boiling water and stirred early.",
            "Salting the cooking water seasons the pasta from the inside; oil in the water "
            "mostly floats on top and does little to prevent sticking.",
            "Searing meat in a very hot pan browns its surface through the Maillard reaction, "
            "which creates hundreds of aromatic compounds.",
            "A sharp knife is safer than a dull one because it needs less force and is less "
            "likely to slip off the food.",
            "Resting a roast after it leaves the oven lets the juices redistribute, so less of "
            "them run out when it is carved.",
            "Acids such as lemon juice or vinegar brighten a dish and balance rich, fatty "
            "ingredients.",
            "Baking is less forgiving than stove-top cooking because the proportions of flour, "
            "fat, sugar and liquid determine the structure of the result.",
        ),
    ),
    "history": (
        (
            "why did the roman empire split into east and west?",
            "what caused the industrial revolution to begin in britain?",
        ),
        (
            "By the third century the Roman Empire had become too large to be governed and "
            "defended effectively from a single capital.",
            "Diocletian divided administration among several emperors, and Constantine later "
            "founded a new capital at Byzantium, renamed Constantinople.",
            "The western half collapsed in the fifth century, while the eastern empire "
            "survived for nearly a thousand more years.",
            "Britain had abundant coal and iron close together, which made it cheap to fuel "
            "the new steam engines and build machinery.",
            "A growing network of canals and later railways moved raw materials and finished "
            "goods far more cheaply than horses and carts could.",
            "Enclosure of common land pushed many rural workers towards towns, where the new "
            "factories needed labour.",
            "Stable institutions and a banking system willing to lend to inventors helped new "
            "technologies spread quickly.",
            "Textile production was the first industry to be transformed, as spinning and "
            "weaving moved from cottages into mills.",
            "Historians still debate how much colonial trade contributed to the capital that "
            "financed early industrialisation.",
        ),
    ),
    "health": (
        (
            "how much sleep do adults need each night?",
            "what are the benefits of regular exercise for the heart?",
        ),
        (
            "Most adults need between seven and nine hours of sleep a night to feel rested and "
            "to keep their attention and memory sharp.",
            "Going to bed and waking up at the same time every day helps keep the body's "
            "internal clock in step with the day.",
            "Screens in the hour before bed can delay sleep, partly because bright light "
            "suppresses the hormone melatonin.",
            "Regular aerobic exercise strengthens the heart muscle, so it pumps more blood with "
            "each beat and rests at a lower rate.",
            "Physical activity also raises levels of beneficial cholesterol and helps control "
            "blood pressure and body weight.",
            "Health guidelines recommend at least one hundred and fifty minutes of moderate "
            "activity a week, such as brisk walking or cycling.",
            "Strength training twice a week preserves muscle mass, which otherwise declines "
            "steadily from middle age.",
            "Drinking enough water matters most during exercise and in hot weather, when the "
            "body loses fluid through sweat.",
            "A balanced diet with vegetables, whole grains and lean protein supports recovery "
            "after training.",
        ),
    ),
    "finance": (
        (
            "what is the difference between a stock and a bond?",
            "how does compound interest grow savings over time?",
        ),
        (
            "A stock is a share of ownership in a company, and its value rises or falls with "
            "the company's prospects.",
            "A bond is a loan to a government or company that pays a fixed interest rate and "
            "returns the principal when it matures.",
            "Stocks have historically returned more than bonds over long periods, but their "
            "prices swing much more from year to year.",
            "Compound interest means that interest is earned on previously earned interest, so "
            "savings grow faster the longer they are left alone.",
            "At seven percent a year, an investment roughly doubles every ten years, a rule of "
            "thumb known as the rule of seventy-two.",
            "Inflation reduces the purchasing power of cash, which is why money kept in a "
            "current account slowly loses value.",
            "Index funds hold every company in a market index and charge low fees, which is "
            "why many advisers recommend them for long-term savers.",
            "Diversification spreads money across many assets so that a loss in one of them "
            "does not ruin the whole portfolio.",
            "Central banks raise interest rates to cool an overheating economy and lower them "
            "to encourage borrowing during a downturn.",
        ),
    ),
    "programming": (
        (
            "what is the difference between a process and a thread?",
            "why are python lists slower than numpy arrays for numeric work?",
        ),
        (
            "A process has its own address space, while threads inside one process share "
            "memory and can read each other's data directly.",
            "Because threads share memory, access to shared data must be synchronised with "
            "locks or other primitives to avoid race conditions.",
            "In CPython the global interpreter lock lets only one thread execute Python "
            "bytecode at a time, although native extensions can release it.",
            "A Python list stores pointers to separate objects, so every element carries its "
            "own type information and reference count.",
            "A NumPy array stores raw numbers contiguously in memory, which lets compiled loops "
            "and vector instructions process them quickly.",
            "Profiling before optimising shows where a program actually spends its time, which "
            "is rarely where the programmer expected.",
            "Unit tests pin the behaviour of small pieces of code so that later changes can be "
            "made with confidence.",
            "A queue with a bounded size applies back pressure: producers wait when consumers "
            "fall behind instead of exhausting memory.",
            "Type hints do not change how Python runs, but tools such as mypy use them to catch "
            "mistakes before the code is executed.",
        ),
    ),
    "astronomy": (
        (
            "why does the moon have phases?",
            "how do astronomers find planets around other stars?",
        ),
        (
            "The moon does not produce light of its own; we see the half of it that is lit by "
            "the sun from a changing angle as it orbits the earth.",
            "At new moon the lit side faces away from us, and at full moon the earth sits "
            "between the sun and the moon.",
            "A lunar month, from one new moon to the next, lasts about twenty-nine and a half "
            "days.",
            "Most known exoplanets were found by the transit method, which detects the slight "
            "dimming of a star when a planet passes in front of it.",
            "The radial velocity method measures how a star wobbles back and forth as an "
            "orbiting planet tugs on it.",
            "Space telescopes avoid the blurring caused by the atmosphere and can watch the "
            "same stars continuously for months.",
            "A light year is the distance light travels in a year, almost ten trillion kilometres.",
            "Stars are born in clouds of gas and dust that collapse under their own gravity "
            "until their cores are hot enough to fuse hydrogen.",
            "The planets of the solar system formed from a disk of material left over after "
            "the sun itself had formed.",
        ),
    ),
    "gardening": (
        (
            "when is the best time to plant tomatoes?",
            "how often should houseplants be watered?",
        ),
        (
            "Tomatoes are sensitive to frost, so they should be planted outside only after the "
            "last cold night of spring has passed.",
            "Seedlings started indoors six to eight weeks earlier give the plants a head start "
            "in regions with short summers.",
            "Most houseplants prefer to dry out slightly between waterings, and more of them "
            "die from too much water than from too little.",
            "Pushing a finger into the soil is a simple test: if the top few centimetres are "
            "dry, it is time to water.",
            "Compost improves soil structure, helps it hold moisture and feeds the organisms "
            "that release nutrients to plant roots.",
            "Mulch keeps the soil cool and damp in summer and suppresses weeds by blocking light.",
            "Rotating crops between beds each year reduces the build-up of pests and diseases "
            "that attack one plant family.",
            "Bees and other pollinators are attracted by a variety of flowers that bloom at "
            "different times of the season.",
            "Pruning fruit trees in late winter opens the canopy to light and air and "
            "encourages strong new growth.",
        ),
    ),
    "travel": (
        (
            "what should i pack for a week of hiking in the alps?",
            "how can travellers avoid jet lag?",
        ),
        (
            "Mountain weather changes quickly, so hikers should pack a waterproof jacket and a "
            "warm layer even on sunny summer days.",
            "Good boots that have already been worn in prevent most of the blisters that spoil "
            "a walking holiday.",
            "Huts in the Alps provide beds and meals along many routes, but they should be "
            "booked in advance during the high season.",
            "Jet lag happens because the body's internal clock is still set to the time zone "
            "the traveller left behind.",
            "Getting daylight in the morning after flying east, and in the evening after flying "
            "west, helps the clock shift faster.",
            "Staying hydrated and avoiding heavy meals on long flights makes the first days at "
            "the destination easier.",
            "Rail passes can be cheaper than individual tickets for travellers who plan to "
            "visit several cities in a short time.",
            "Carrying a copy of important documents separately from the originals makes it "
            "easier to replace them if they are lost.",
            "Learning a few words of the local language is appreciated and often leads to "
            "friendlier conversations.",
        ),
    ),
    "energy": (
        (
            "how do solar panels turn sunlight into electricity?",
            "why is storing renewable energy difficult?",
        ),
        (
            "A solar cell is made of layers of silicon treated so that light knocks electrons "
            "loose and drives them around a circuit.",
            "Panels produce direct current, which an inverter converts into the alternating "
            "current used by homes and the grid.",
            "The output of solar and wind power varies with the weather and the time of day, "
            "while demand follows its own daily pattern.",
            "Batteries can shift energy by a few hours, but storing it for weeks or across "
            "seasons remains expensive.",
            "Pumped hydro storage moves water uphill when power is cheap and lets it run back "
            "through turbines when power is needed.",
            "Grid operators balance supply and demand every second, and large swings make that "
            "job harder.",
            "Wind turbines are most efficient at sites with strong, steady winds, such as "
            "coastlines and open sea.",
            "Green hydrogen made by electrolysis could store surplus electricity as fuel, but "
            "much of the energy is lost in conversion.",
            "Improving the insulation of buildings reduces the energy needed for heating and "
            "is often the cheapest saving available.",
        ),
    ),
    "animals": (
        (
            "how do birds know where to migrate?",
            "why do cats purr?",
        ),
        (
            "Migrating birds use several cues at once, including the position of the sun, the "
            "pattern of stars and the earth's magnetic field.",
            "Young birds of many species make their first migration without their parents, "
            "guided by an inherited sense of direction.",
            "Landmarks such as coastlines and mountain ranges help experienced birds refine "
            "their route.",
            "Cats purr by rapidly contracting the muscles of the larynx as they breathe in and "
            "out.",
            "Purring often signals contentment, but cats also purr when they are injured or "
            "stressed, possibly to soothe themselves.",
            "Some researchers suggest that the low frequencies of purring may help bones and "
            "tissues heal.",
            "Dogs were domesticated from wolves thousands of years ago and have since been bred "
            "for herding, guarding, hunting and companionship.",
            "Octopuses can change the colour and texture of their skin in a fraction of a "
            "second to blend into their surroundings.",
            "Elephants communicate with low rumbles that travel through the ground over several "
            "kilometres.",
        ),
    ),
}
