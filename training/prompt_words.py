"""Filler word lists for the synthesised training prompts (`training.prompts`): plain lists that the
templates there are expanded over. Each list's items are worded to fit every template that uses it
(articles included where the template has none). Topics close to a Vicuna-80 question are left out.
"""

from __future__ import annotations

# ----------------------------------------------------------------- listlike fillers

# gerund phrases: "Give three tips for {a}.", "What should a beginner avoid when {a}?"
ACTIVITIES = [
    "learning to play the guitar", "starting a vegetable garden", "training a puppy", "running a first marathon",
    "writing a cover letter", "planning a road trip", "learning to swim as an adult", "baking bread at home",
    "keeping a houseplant alive", "preparing for a job interview", "moving to a new city", "hosting a dinner party",
    "learning a second language", "saving for a house", "starting a small online shop", "taking better photos",
    "organising a closet", "studying for a math exam", "camping in the rain", "cycling to work",
    "learning to draw", "reducing food waste", "writing a short story", "keeping a journal",
    "teaching a child to read", "caring for an elderly parent", "choosing a laptop", "painting a room",
    "making friends after college", "public speaking", "birdwatching", "brewing coffee at home",
    "planning a wedding on a budget", "learning chess", "volunteering locally", "decluttering a garage",
    "building a bookshelf", "hiking in the mountains", "managing a small team", "starting a podcast",
    "learning to knit", "fixing a flat bicycle tyre", "raising chickens", "running a book club",
    "learning to code in Python", "making pottery", "training for a triathlon", "writing a wedding speech",
    "learning to ski", "growing tomatoes on a balcony", "renovating a kitchen", "learning to juggle",
    "packing for a long flight", "starting a running club", "keeping bees", "learning sign language",
    "sewing a simple dress", "planning a museum visit with kids", "learning to sail", "writing a blog",
    "learning to ride a motorbike", "starting a compost heap", "writing a CV", "learning to touch-type",
    "growing herbs indoors", "planning a surprise party", "teaching a teenager to drive", "looking after a newborn",
    "buying a first home", "fostering a cat", "starting a YouTube channel", "running a garage sale",
    "learning to surf", "making candles", "learning calligraphy", "training for a 10K race",
    "travelling abroad with young children", "organising a community event", "learning to play the drums",
    "making a family budget", "restoring old furniture", "cooking for a large group", "applying to university",
    "starting a new job", "learning to ice skate", "keeping a sourdough starter", "writing a song",
    "building a website", "moving house with pets", "preparing for a driving test", "learning to crochet",
    "training a rescue dog",
]
# things one can try or enjoy: "What are the benefits of {t}?", "List four reasons to try {t}."
THINGS = [
    "cycling", "reading fiction", "learning music", "owning a cat", "drinking tea", "meditation", "swimming",
    "composting", "public libraries", "electric cars", "solar panels", "yoga", "gardening", "board games",
    "walking meetings", "open-source software", "journaling", "cold showers", "city parks", "carpooling",
    "learning history", "museums", "a standing desk", "bilingual education", "community gardens",
    "rock climbing", "baking with kids", "learning to cook", "camping", "playing in a band", "pen pals",
    "learning to dance", "a morning routine", "hiking clubs", "reading poetry", "second-hand clothes",
    "a vegetable box subscription", "learning a craft", "chess clubs", "long walks",
    "kayaking", "pottery classes", "audiobooks", "volunteering", "sea swimming", "trail running",
    "film photography", "a bullet journal", "jigsaw puzzles", "crossword puzzles", "geocaching",
    "home brewing", "amateur theatre", "choir singing", "Pilates", "tai chi", "bouldering",
    "a capsule wardrobe", "batch cooking", "stargazing", "fishing", "sketching outdoors",
    "language exchange meetups", "tabletop role-playing games", "slow travel", "train travel",
    "growing houseplants", "ballroom dancing", "martial arts", "fermenting vegetables",
]
# "What are the pros and cons of {c}?", "Should I consider {c}?"
CHOICES = [
    "renting an apartment", "buying a used car", "working part-time", "living in a small town",
    "studying abroad", "freelancing", "homeschooling", "owning a dog", "taking a gap year", "a four-day work week",
    "online classes", "shared offices", "nuclear power", "tiny houses", "self-driving buses",
    "working night shifts", "a heat pump", "an open-plan office", "buying an electric bike", "living with roommates",
    "going back to university as an adult", "joining a gym", "a car-sharing club", "moving abroad for work",
    "leasing a car", "working for a start-up", "a fixed-rate mortgage", "a smart speaker",
    "a career change at forty", "retiring early", "a hybrid car", "adopting a rescue dog",
    "a meal-kit subscription", "living without a car", "private health insurance", "self-publishing a book",
    "an apprenticeship instead of university", "a home battery for solar panels", "boarding school",
    "living in a city centre",
]
PAIRS = [
    ("tea", "coffee"), ("trains", "planes"), ("e-books", "paper books"), ("cats", "dogs"), ("running", "cycling"),
    ("renting", "buying a home"), ("city life", "country life"), ("laptops", "desktop computers"),
    ("summer", "winter holidays"), ("walking", "driving to work"), ("chess", "checkers"), ("piano", "violin"),
    ("Linux", "Windows"), ("SQL databases", "spreadsheets"), ("wool", "cotton"),
    ("butter", "margarine"), ("gas hobs", "induction hobs"), ("public schools", "private schools"),
    ("yoga", "Pilates"), ("kayaks", "canoes"), ("crocodiles", "alligators"), ("frogs", "toads"),
    ("rabbits", "hares"), ("weather", "climate"), ("hurricanes", "tornadoes"), ("baking soda", "baking powder"),
    ("stocks", "bonds"), ("oil paint", "acrylic paint"), ("film cameras", "digital cameras"),
    ("email", "phone calls"), ("buses", "trams"), ("football", "rugby"), ("tennis", "badminton"),
    ("hotels", "holiday rentals"), ("typing notes", "writing notes by hand"), ("Spanish", "Portuguese"),
    ("opera", "musicals"), ("hamsters", "guinea pigs"), ("jogging", "sprinting"), ("lakes", "ponds"),
]
# "Suggest five ideas for {e}.", "Plan the activities for {e}."
EVENTS = [
    "a child's birthday party", "a rainy weekend", "a team-building day", "a school science fair",
    "a small wedding", "a charity fundraiser", "a family reunion", "a book club meeting", "a picnic",
    "a retirement party", "a neighbourhood clean-up", "a board game night", "a first date", "a holiday market",
    "a baby shower", "a graduation party", "an office Christmas party", "a sleepover for ten-year-olds",
    "a long train journey", "a snow day with kids", "a school sports day", "a garden party",
    "a colleague's leaving party", "a first wedding anniversary", "a weekend in a cabin", "a sixtieth birthday",
    "a community open day", "a beach day", "a cinema night at home", "a teenager's birthday", "a street party",
    "a camping trip with friends", "a student welcome week", "a village fête", "a charity quiz night",
    "a Halloween party for kids", "a quiet New Year's Eve at home", "an online team social",
    "a work away-day", "a grandparent's visit",
]
# "What features should I look for in {p}?", "How do I choose {p}?"
PRODUCTS = [
    "a good pair of running shoes", "a reliable bicycle", "a kitchen knife", "a backpack for travel",
    "a desk chair", "a smartphone for a grandparent", "a tent", "a coffee grinder", "a winter coat",
    "a beginner's telescope", "a rice cooker", "a reading lamp",
    "a laptop for university", "a car seat for a toddler", "a mattress", "a pair of hiking boots",
    "a vacuum cleaner", "a blender", "a sleeping bag", "an electric toothbrush", "a pair of headphones",
    "a pushchair", "a sofa", "a digital piano", "a kayak", "a fridge freezer", "a pair of glasses",
    "a cordless drill", "a computer monitor", "a smartwatch", "a bike helmet", "a lawnmower",
    "an air purifier", "a first guitar", "a stand mixer", "a dehumidifier", "a suitcase",
    "a fish tank", "a child's first bike", "a printer", "a home Wi-Fi router",
]
# devices and systems: "How does {x} work?"
MECHANISMS = [
    "a refrigerator", "a microwave oven", "a heat pump", "a smoke detector", "an electric kettle",
    "a dishwasher", "a washing machine", "a thermostat", "a car's braking system", "an aeroplane wing",
    "a hot-air balloon", "a submarine", "a pin tumbler lock", "a touchscreen", "a contactless card payment",
    "a barcode scanner", "satellite navigation", "home Wi-Fi", "a search engine", "an email spam filter",
    "a wind turbine", "a hydroelectric dam", "a rechargeable battery", "an electric motor", "a magnetic compass",
    "a digital camera", "noise-cancelling headphones", "a pressure cooker", "an induction hob",
    "a lightning rod", "a sewage treatment plant", "a water filter jug", "a 3D printer", "a lift",
    "an escalator", "a parachute", "a credit score", "a mortgage", "a stock exchange", "a postal system",
    "a carbon monoxide alarm", "a bicycle's gears", "a hearing aid", "a lighthouse", "a canal lock",
]
# singular or uncountable noun phrases: "What factors affect {x}?", "Why does {x} vary so much?"
FACTORS = [
    "the price of a plane ticket", "the price of a house", "the battery life of a phone", "the taste of coffee",
    "the fuel economy of a car", "the speed of a home internet connection", "the cost of car insurance",
    "the rent for a flat", "the time it takes bread dough to rise", "the lifespan of a dog",
    "the quality of a night's sleep", "the size of a household electricity bill", "the salary for a job",
    "the price of a used car", "the value of a currency", "the length of a commute",
    "the success of a small restaurant", "the sound quality of a speaker", "the flavour of a tomato",
    "the colour of autumn leaves", "the growth rate of a tree", "the popularity of a baby name",
    "the cost of a wedding", "the price of a concert ticket", "the shelf life of bread",
    "the range of an electric car", "the number of tourists visiting a town", "the cost of a university degree",
    "the waiting time at a doctor's surgery", "the taste of tap water", "the lifespan of a laptop",
    "the drying time of paint", "the yield of an apple tree", "the attendance at a football match",
    "the length of a queue at a theme park", "the brightness of the night sky", "the temperature of the sea",
    "the crime rate in a neighbourhood", "the size of a family's food bill", "the strength of a concrete wall",
]
# gerund or uncountable phrases: "Why is {x} important?", "Why does {x} matter?"
MATTERS = [
    "biodiversity", "clean drinking water", "voting in local elections", "protecting bees",
    "financial literacy", "protecting wetlands", "public transport", "regular exercise", "washing your hands",
    "road safety education", "the ozone layer", "wearing sunscreen", "good posture", "protecting coral reefs",
    "learning to swim", "backing up your files", "using strong passwords", "installing software updates",
    "healthy soil", "staying hydrated", "good ventilation indoors", "early childhood education",
    "local journalism", "going for regular dental check-ups", "saving for retirement", "having an emergency fund",
    "fire safety training", "wearing a seatbelt", "getting enough daylight", "reading to young children",
    "accurate weather forecasting", "keeping the night sky dark", "tree cover in cities",
    "sleep", "proofreading", "citing your sources", "good record-keeping in a small business",
    "a balanced diet", "keeping a household budget", "first aid training",
]
# "What are the main causes of {x}?", "What can be done to reduce {x}?"
CAUSES = [
    "traffic jams", "loneliness among older people", "litter in parks", "procrastination", "burnout at work",
    "homelessness", "air pollution in cities", "soil erosion on farms", "childhood obesity", "low voter turnout",
    "plastic pollution in the oceans", "noise in open-plan offices", "the shortage of affordable housing",
    "youth unemployment", "long hospital waiting times", "flooding in towns", "forest fires",
    "stage fright", "insomnia", "excessive screen time", "bullying at school", "road accidents",
    "staff turnover in restaurants", "water shortages", "the decline of high-street shops", "rising rents",
    "school absences", "coastal erosion", "power cuts", "delays on the railways", "food poisoning",
    "the decline of hedgehogs in gardens", "shoplifting", "light pollution", "sports injuries",
    "high dropout rates at university", "conflict between neighbours", "tooth decay in children",
    "prison overcrowding", "speeding on residential streets",
]
# singular or uncountable phrases: "How does {x} affect people?"
EFFECTS = [
    "noise pollution", "a long daily commute", "light pollution at night", "working night shifts", "a heatwave",
    "a power cut lasting several days", "moving house often as a child", "social isolation",
    "the closure of a local factory", "a sharp rise in rent", "living near an airport", "a lack of green space",
    "daylight saving time", "a constant stream of phone notifications", "a noisy neighbour",
    "a new motorway through a town",
    "mass tourism in a small village", "the shift to cashless payments", "online shopping",
    "a rise in the minimum wage", "a long drought", "remote learning", "growing up bilingual", "caffeine",
    "skipping breakfast", "chronic stress at work", "listening to loud music", "fast fashion",
    "a very cold winter", "a new supermarket opening in a village", "a sudden job loss",
    "air conditioning", "poor lighting in an office", "living in a high-rise flat", "the closure of a bank branch",
    "a rail strike", "clutter at home", "sitting all day", "a new cycle lane", "losing your sense of smell",
]
# verb phrases: "How can I {g}?", "What are some practical ways to {g}?"
GOALS = [
    "sleep better", "save money on groceries", "stay focused while studying", "drink more water",
    "make my mornings less rushed", "eat more vegetables", "keep my inbox under control",
    "feel more confident speaking in meetings", "stop biting my nails", "get along better with my flatmate",
    "reduce my electricity bill", "keep my car running for longer", "remember people's names",
    "read more books", "spend less time on my phone", "make my small flat feel bigger", "keep my kitchen tidy",
    "stay warm in winter without huge heating bills", "keep my home cool in a heatwave", "get fitter without a gym",
    "sit less during the day", "pack lighter for trips", "learn new words faster", "write clearer emails",
    "make a long flight more comfortable", "support a friend who is grieving", "keep in touch with old friends",
    "attract more birds to my garden", "cut down on sugar", "protect my privacy online",
    "reduce my household waste", "make my commute more enjoyable", "prepare my home for a power cut",
    "help my child with homework", "encourage my kids to read", "save up for a holiday",
    "pay off a credit card faster", "negotiate a better salary", "make a good first impression",
    "improve my handwriting", "become a better listener", "look after my back at a desk job",
    "spend more time outdoors", "be a better neighbour", "get more out of a museum visit",
    "keep my garden looking good with little time", "stop losing my keys", "cook healthy meals on a budget",
]
# clauses: "How can you tell whether {x}?", "What are the signs that {x}?"
SIGNS = [
    "a melon is ripe", "an online shop is legitimate", "a plant needs more water", "an egg is still fresh",
    "a used car has been in an accident", "a bicycle chain needs oil", "a dog is happy", "a cat is unwell",
    "a tyre needs replacing", "milk has gone off", "a houseplant is getting too much sun", "a job offer is a scam",
    "an email is a phishing attempt", "a baby is tired", "an avocado is ready to eat", "a pineapple is ripe",
    "a cake is fully baked", "a laptop battery is failing", "a hard drive is about to fail", "a tree is dying",
    "a roof needs repairing", "a house has a damp problem", "a fridge is not cold enough",
    "a pair of shoes fits well", "a mattress needs replacing", "a running injury needs rest",
    "a plant has outgrown its pot", "a fish in an aquarium is stressed", "a thunderstorm is on its way",
    "the ice on a pond is unsafe", "a second-hand bike might be stolen", "an online review is fake",
    "an antique is genuine", "a car needs new brakes", "a puppy is ready to be left alone",
    "a sourdough starter is active", "a chicken is laying eggs", "a lawn needs feeding",
    "a child is ready to start reading", "a rental flat has a pest problem",
]
# roles with article: "You are {r}. Describe a typical day at work."
ROLES = [
    "a lighthouse keeper", "a pastry chef", "a zookeeper", "a ferry captain", "a museum guide", "a beekeeper",
    "a park ranger", "a night-shift nurse", "an air traffic controller", "a librarian", "a firefighter",
    "a primary school teacher", "a vet", "a dairy farmer", "a postal worker", "a bus driver",
    "a hotel receptionist", "a tailor", "a blacksmith", "a florist", "a dentist", "a marine biologist",
    "a tour guide in Rome", "a wedding photographer", "a long-distance lorry driver", "a mountain rescue volunteer",
    "a potter", "a court interpreter", "a sound engineer", "a theatre stage manager", "a train conductor",
    "a lifeguard", "a dog groomer", "a glassblower", "an archaeologist", "a cheesemaker",
    "a wildlife photographer", "a bookshop owner", "a carpenter", "a radio presenter", "a piano tuner",
    "a midwife", "a hospital porter", "a gardener at a historic estate",
]
# subjunctive clauses: "What would happen if {cf}?", "How would daily life be different if {cf}?"
COUNTERFACTUALS = [
    "everyone worked from home", "there were no clocks", "humans needed only two hours of sleep",
    "the printing press did not exist", "nobody could tell a lie", "it rained every afternoon",
    "money did not exist", "everyone spoke the same language", "cars were banned from city centres",
    "people lived to be 150", "the week had only four days", "electricity were free", "there were no supermarkets",
    "every household grew its own food", "schools had no exams", "nobody ate meat", "plastic did not exist",
    "there were no maps", "animals could talk", "a day lasted 48 hours", "there were no seasons",
    "everyone retired at 40", "cash disappeared overnight", "there were no weekends", "people could teleport",
    "cities had no street lights", "everyone had to cycle to work", "nobody had a surname",
    "children chose their own school subjects", "there were no traffic lights", "every job paid the same wage",
    "humans had no sense of smell", "everyone could read each other's thoughts", "sugar did not exist",
    "nobody drank coffee", "trains were faster than planes", "owning a car were illegal",
    "the Moon did not exist", "nobody could swim", "all music were free", "everyone had a personal robot",
    "phones could only make calls", "there were no shops open on Sundays", "snow fell only once a decade",
]
# "Write a short blog post about {t}."
BLOG_TOPICS = [
    "the joys of growing your own vegetables", "why every town needs a repair café",
    "getting started with birdwatching", "cooking with seasonal vegetables", "running through the winter",
    "life in a shared house", "the first year of owning a dog", "exploring a city on foot",
    "keeping chickens in the back garden", "making fresh pasta at home", "a weekend without screens",
    "visiting a farmers' market", "starting a family recipe book", "caring for a cast-iron pan",
    "baking your first sourdough loaf", "learning to sew as an adult", "cycling holidays on a budget",
    "the small pleasures of an evening walk", "turning a balcony into a garden", "swapping books with neighbours",
    "learning a language in your spare time", "staying safe while wild swimming",
    "fixing clothes instead of replacing them",
    "planning a camping trip with toddlers", "keeping a nature diary", "getting into jigsaw puzzles",
    "the charm of old railway stations", "decorating a rented flat", "hosting a games night",
    "taking up the piano in your fifties", "a day trip by train", "cooking for one",
    "making your own candles", "volunteering at an animal shelter", "the best things about autumn",
    "choosing a first houseplant", "stargazing for beginners", "packing healthy school lunches",
    "learning to love early mornings", "restoring an old bicycle",
]
# "Write a welcome guide for new members of {g}."
GROUPS = [
    "a community choir", "a local hiking club", "a chess club", "a neighbourhood watch group",
    "a community garden", "a cycling club", "a book club", "a knitting circle", "an amateur astronomy society",
    "a rowing club", "an indoor climbing gym", "a photography club", "a school parents' association",
    "a student film society", "a model railway club", "a beekeeping association", "a debating society",
    "an open-source software project", "a makerspace", "a dance studio", "a youth orchestra",
    "a tenants' association", "a sailing club", "a language exchange group", "a local history society",
    "a sewing group", "a swimming club", "a trail running group", "a community radio station",
    "a food bank volunteer team", "an amateur dramatics society", "an allotment society",
]
# "Write a newsletter announcing {e}."
NEWS = [
    "the opening of a new branch library", "a summer reading challenge", "a school's new after-school clubs",
    "changes to the office recycling scheme", "a neighbourhood street party", "a new bike-sharing scheme in town",
    "the winners of a local photography competition", "the reopening of a renovated swimming pool",
    "a charity bake sale", "a new weekly farmers' market", "longer opening hours at the gym",
    "a staff volunteering day", "a new parking policy at work", "a tree-planting weekend",
    "a free coding workshop for teenagers", "the retirement of a long-serving head teacher",
    "a new mentoring programme for staff", "a club's annual general meeting", "a new menu in the staff canteen",
    "a spring plant swap", "a local history exhibition", "the first session of a repair café",
    "a new walking trail in the park", "a blood donation drive", "the start of the allotment season",
    "a change to bin collection days", "a holiday toy collection", "a careers fair at the college",
    "a new website for the village council", "the arrival of a new doctor at the local surgery",
]

# ----------------------------------------------------------------- other fillers

CONCEPTS = [
    "inflation", "photosynthesis", "a leap year", "gravity", "a haiku", "compound interest", "an eclipse",
    "a volcano", "recycling", "a democracy", "an ecosystem", "a vaccine", "a metaphor", "a prime number",
    "the water cycle", "a rainbow", "an earthquake", "a hash table", "a noun", "friction", "erosion",
    "a comet", "evaporation", "a tariff", "a glacier", "a simile", "a virus", "an atom", "a budget",
    "a fossil", "a thermometer", "a tide", "a habitat", "an orbit", "a palindrome", "a fraction",
    "a pulley", "a lens", "magnetism", "a fable",
]
COUNTRIES = ["France", "Japan", "Kenya", "Brazil", "Canada", "Egypt", "Norway", "India", "Mexico", "Australia", "Peru",
             "Italy", "Vietnam", "Ghana", "Chile", "Poland", "Spain", "Thailand", "Greece", "Ireland"]
SENTENCES = [
    "The cat chased the mouse across the kitchen.", "We will finish the report tomorrow.",
    "The old bridge was closed after the storm.", "She plays the piano every evening.",
    "The children planted three trees in the park.", "Our team won the final game.",
    "He forgot his umbrella at the station.", "The museum opens at nine.",
    "They painted the fence blue.", "I have never seen such a tall building.",
    "The baker sold all the bread before noon.", "My brother fixed the broken chair.",
    "The students wrote a letter to the mayor.", "The river flooded the small village.",
    "A strong wind knocked over the sign.", "The chef tasted the soup twice.",
    "Our neighbours adopted a kitten.", "The train arrived ten minutes late.",
    "The artist finished the mural in a week.", "The committee approved the new plan.",
    "The gardener waters the roses every morning.", "My aunt sends us a postcard from every trip.",
    "The pupils are reading a book about volcanoes.", "The mechanic repaired our car in an hour.",
    "A young fox crossed the road at dawn.", "The council is building a new library.",
    "We watched the fireworks from the hill.", "The teacher marks the homework on Fridays.",
    "The dog buried its bone under the apple tree.", "My parents booked a cabin by the lake.",
    "The company hired twenty new engineers.", "The storm damaged several roofs in the town.",
    "Our class visited the science museum last week.", "The waiter brought us the wrong dessert.",
    "The nurse checks the patients every two hours.", "The band played three encores.",
    "Grandma knitted a scarf for each of us.", "The hikers reached the top before sunset.",
    "The firefighters rescued a cat from the tree.", "The city opened a new cycle lane.",
]
ANIMALS = ["spider", "horse", "octopus", "ant", "penguin", "crab", "snake", "kangaroo", "bee", "starfish",
           "frog", "owl", "dolphin", "camel", "butterfly", "lobster", "bat", "goat", "eagle", "squid"]
# "Write a Python function that {f}."
CODE = [
    "reverses a string", "returns the largest number in a list", "checks whether a word is a palindrome",
    "counts the vowels in a string", "converts Celsius to Fahrenheit", "returns the sum of a list of numbers",
    "removes duplicates from a list while keeping the order", "returns the factorial of n",
    "checks whether a year is a leap year", "returns the average of a list", "capitalises every word in a sentence",
    "returns the second smallest number in a list", "counts how often each word appears in a text",
    "checks whether two words are anagrams", "counts the words in a sentence",
    "converts a number of minutes into hours and minutes", "keeps only the even numbers from a list",
    "merges two dictionaries", "flattens a list of lists", "returns the longest word in a sentence",
    "checks whether a number is prime", "returns the greatest common divisor of two numbers",
    "sums the digits of a number", "swaps the keys and values of a dictionary", "removes all spaces from a string",
    "checks whether a list is sorted", "returns the median of a list of numbers",
    "converts a binary string to a decimal number", "returns the initials of a full name",
    "clamps a number between a minimum and a maximum", "rounds a price to two decimal places",
    "returns the last three items of a list",
]
# noun phrases: "Estimate the number of {x}."  (Vicuna-80's own Fermi topics are left out)
FERMI = [
    "hairs on a human head", "piano tuners in Chicago", "golf balls that would fit in a school bus",
    "litres of water a person drinks in a year", "steps a person takes in a year",
    "cups of coffee drunk in London each day",
    "trees in Central Park", "leaves on a large oak tree", "grains of rice in a one-kilogram bag",
    "bricks in a typical family house", "slices of pizza eaten in New York each day", "teachers in the United Kingdom",
    "petrol stations in Germany", "cars that cross the Golden Gate Bridge each day",
    "tennis balls that would fill a swimming pool", "people in the air on passenger planes at any moment",
    "books in a large public library", "dogs in Paris", "ping-pong balls that would fit in a classroom",
    "sheets of paper a small office uses in a year", "bicycles in the Netherlands", "eggs eaten in Britain each day",
    "jelly beans in a one-litre jar", "words in a typical novel", "hours a child spends at school by the age of 18",
    "apples one tree produces in a season", "bees in a single hive", "ants in a typical ant colony",
    "windows in a tall office skyscraper", "emails an office worker receives in a year",
    "loaves of bread a busy bakery sells in a year", "light bulbs in a large office building",
    "cinema seats in a large city", "babies born worldwide every minute", "hot dogs sold at a baseball game",
    "meals a person eats in a lifetime", "haircuts given in a city of a million people each day",
    "kilometres a taxi drives in its working life", "footballs that would fit inside a football stadium",
    "grains of sand in a child's sandpit",
]
# complete one-line factual questions
FACTS = [
    "Who wrote Pride and Prejudice?", "How many planets are in the solar system?",
    "What is the chemical symbol for gold?", "What is the boiling point of water at sea level in Celsius?",
    "Who painted the Mona Lisa?", "What is the largest ocean on Earth?", "How many sides does a hexagon have?",
    "What is the tallest mountain in the world?", "Which planet is known as the Red Planet?",
    "What is the longest river in Africa?", "Who developed the theory of relativity?",
    "In which year did people first walk on the Moon?", "What is the square root of 144?",
    "Which gas do plants take in from the air?", "How many bones are in the adult human body?",
    "What is the hardest natural substance?", "Who composed The Four Seasons?", "What is the smallest prime number?",
    "Which element has the atomic number 1?", "How many minutes are in a day?",
    "What is the freezing point of water in Fahrenheit?", "Who wrote Romeo and Juliet?",
    "What is the largest planet in the solar system?", "What currency is used in Japan?",
    "How many continents are there?", "What is the main ingredient of guacamole?",
    "Who was the first person to reach the South Pole?", "What does DNA stand for?",
    "Roughly how fast does light travel?", "Which organ pumps blood around the body?",
    "How many strings does a standard guitar have?", "What is the chemical formula for water?",
    "Who is credited with inventing the telephone?", "What is the largest hot desert in the world?",
    "Which country gave the Statue of Liberty to the United States?",
    "How many players does a football team have on the pitch?", "Who wrote One Hundred Years of Solitude?",
    "What is the longest bone in the human body?", "How many hours are in a week?",
    "What is the chemical symbol for sodium?", "What is the largest mammal on Earth?",
    "How many teeth does an adult human usually have?", "Who discovered penicillin?",
    "What is the plural of cactus?", "What is the smallest country in the world?",
    "In which year did the Berlin Wall fall?", "Who is said to have written The Odyssey?",
    "What is a group of lions called?", "How many degrees are in a right angle?",
    "What is the opposite of generous?", "How many centimetres are in a metre?",
    "Which metal is liquid at room temperature?", "What is the tallest animal in the world?",
    "Who was the first woman to win a Nobel Prize?", "What is the largest organ of the human body?",
    "What is the currency of the United Kingdom?", "How many days are in a leap year?",
    "Who wrote Nineteen Eighty-Four?", "Which gas makes up most of Earth's atmosphere?",
    "What is the shortest month of the year?", "What colour do you get by mixing blue and yellow?",
    "Who was the first President of the United States?", "In which city is the Colosseum?",
    "Which ocean lies between Africa and Australia?", "Who wrote Don Quixote?",
    "What is the chemical symbol for iron?", "What is the largest bird in the world?",
    "What is the fastest land animal?", "How many keys does a standard piano have?",
    "Who wrote The Little Prince?", "What is the capital of New Zealand?", "How many sides does a pentagon have?",
]
