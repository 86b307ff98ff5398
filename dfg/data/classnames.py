"""Class names of the datasets whose files are not on this machine, so the registry (and the app) can show
them before anything is downloaded. Loaders still read the real names from the files (they win)."""

# Caltech-256 folder names are "NNN.name" (001.ak47 … 257.clutter); the NNN prefix is the 1-based index.
CALTECH256 = tuple((
    "ak47 american-flag backpack baseball-bat baseball-glove basketball-hoop bat bathtub bear beer-mug "
    "billiards binoculars birdbath blimp bonsai-101 boom-box bowling-ball bowling-pin boxing-glove "
    "brain-101 breadmaker buddha-101 bulldozer butterfly cactus cake calculator camel cannon canoe "
    "car-tire cartman cd centipede cereal-box chandelier-101 chess-board chimp chopsticks cockroach "
    "coffee-mug coffin coin comet computer-keyboard computer-monitor computer-mouse conch cormorant "
    "covered-wagon cowboy-hat crab-101 desk-globe diamond-ring dice dog dolphin-101 doorknob "
    "drinking-straw duck dumb-bell eiffel-tower electric-guitar-101 elephant-101 elk ewer-101 eyeglasses "
    "fern fighter-jet fire-extinguisher fire-hydrant fire-truck fireworks flashlight floppy-disk "
    "football-helmet french-horn fried-egg frisbee frog frying-pan galaxy gas-pump giraffe goat "
    "golden-gate-bridge goldfish golf-ball goose gorilla grand-piano-101 grapes grasshopper guitar-pick "
    "hamburger hammock harmonica harp harpsichord hawksbill-101 head-phones helicopter-101 hibiscus "
    "homer-simpson horse horseshoe-crab hot-air-balloon hot-dog hot-tub hourglass house-fly "
    "human-skeleton hummingbird ibis-101 ice-cream-cone iguana ipod iris jesus-christ joy-stick "
    "kangaroo-101 kayak ketch-101 killer-whale knife ladder laptop-101 lathe leopards-101 license-plate "
    "lightbulb light-house lightning llama-101 mailbox mandolin mars mattress megaphone menorah-101 "
    "microscope microwave minaret minotaur motorbikes-101 mountain-bike mushroom mussels necktie octopus "
    "ostrich owl palm-pilot palm-tree paperclip paper-shredder pci-card penguin people pez-dispenser "
    "photocopier picnic-table playing-card porcupine pram praying-mantis pyramid raccoon radio-telescope "
    "rainbow refrigerator revolver-101 rifle rotary-phone roulette-wheel saddle saturn school-bus "
    "scorpion-101 screwdriver segway self-propelled-lawn-mower sextant sheet-music skateboard skunk "
    "skyscraper smokestack snail snake sneaker snowmobile soccer-ball socks soda-can spaghetti speed-boat "
    "spider spoon stained-glass starfish-101 steering-wheel stirrups sunflower-101 superman sushi swan "
    "swiss-army-knife sword syringe tambourine teapot teddy-bear teepee telephone-box tennis-ball "
    "tennis-court tennis-racket theodolite toaster tomato tombstone top-hat touring-bike tower-pisa "
    "traffic-light treadmill triceratops tricycle trilobite-101 tripod t-shirt tuning-fork tweezer "
    "umbrella-101 unicorn vcr video-projector washing-machine watch-101 waterfall watermelon welding-mask "
    "wheelbarrow windmill wine-bottle xylophone yarmulke yo-yo zebra airplanes-101 car-side-101 "
    "faces-easy-101 greyhound tennis-shoes toad clutter "
).split())

# Food-101 meta/classes.txt order (alphabetical).
FOOD101 = tuple((
    "apple_pie baby_back_ribs baklava beef_carpaccio beef_tartare beet_salad beignets bibimbap "
    "bread_pudding breakfast_burrito bruschetta caesar_salad cannoli caprese_salad carrot_cake ceviche "
    "cheese_plate cheesecake chicken_curry chicken_quesadilla chicken_wings chocolate_cake "
    "chocolate_mousse churros clam_chowder club_sandwich crab_cakes creme_brulee croque_madame cup_cakes "
    "deviled_eggs donuts dumplings edamame eggs_benedict escargots falafel filet_mignon fish_and_chips "
    "foie_gras french_fries french_onion_soup french_toast fried_calamari fried_rice frozen_yogurt "
    "garlic_bread gnocchi greek_salad grilled_cheese_sandwich grilled_salmon guacamole gyoza hamburger "
    "hot_and_sour_soup hot_dog huevos_rancheros hummus ice_cream lasagna lobster_bisque "
    "lobster_roll_sandwich macaroni_and_cheese macarons miso_soup mussels nachos omelette onion_rings "
    "oysters pad_thai paella pancakes panna_cotta peking_duck pho pizza pork_chop poutine prime_rib "
    "pulled_pork_sandwich ramen ravioli red_velvet_cake risotto samosa sashimi scallops seaweed_salad "
    "shrimp_and_grits spaghetti_bolognese spaghetti_carbonara spring_rolls steak strawberry_shortcake "
    "sushi tacos takoyaki tiramisu tuna_tartare waffles "
).split())

DIGITS = tuple(str(d) for d in range(10))
FMNIST = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
STL10 = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")
