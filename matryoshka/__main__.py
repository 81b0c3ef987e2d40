from matryoshka.cli import main

main()
