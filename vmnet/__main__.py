from vmnet.entry import main

main()
